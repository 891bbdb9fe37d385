// Package types holds the generic WIT types the generated bindings use:
// option, result, unit and tuples.
package types

// Unit is WIT's `_`.
type Unit struct{}

// OptionTag says which case an Option holds.
type OptionTag uint8

const (
	OptionNone OptionTag = iota
	OptionSome
)

// Option is WIT's option<T>.
type Option[T any] struct {
	tag   OptionTag
	value T
}

func Some[T any](value T) Option[T] { return Option[T]{tag: OptionSome, value: value} }
func None[T any]() Option[T]        { return Option[T]{} }

func (o Option[T]) Tag() OptionTag { return o.tag }
func (o Option[T]) IsSome() bool   { return o.tag == OptionSome }
func (o Option[T]) IsNone() bool   { return o.tag == OptionNone }

// Some returns the value; it panics on None.
func (o Option[T]) Some() T {
	if o.tag != OptionSome {
		panic("option is none")
	}
	return o.value
}

// ResultTag says which case a Result holds.
type ResultTag uint8

const (
	ResultOk ResultTag = iota
	ResultErr
)

// Result is WIT's result<T, E>.
type Result[T any, E any] struct {
	tag ResultTag
	ok  T
	err E
}

func Ok[T any, E any](value T) Result[T, E] { return Result[T, E]{tag: ResultOk, ok: value} }
func Err[T any, E any](value E) Result[T, E] {
	return Result[T, E]{tag: ResultErr, err: value}
}

func (r Result[T, E]) Tag() ResultTag { return r.tag }
func (r Result[T, E]) IsOk() bool     { return r.tag == ResultOk }
func (r Result[T, E]) IsErr() bool    { return r.tag == ResultErr }

// Ok returns the value; it panics on Err.
func (r Result[T, E]) Ok() T {
	if r.tag != ResultOk {
		panic("result is err")
	}
	return r.ok
}

// Err returns the error; it panics on Ok.
func (r Result[T, E]) Err() E {
	if r.tag != ResultErr {
		panic("result is ok")
	}
	return r.err
}

// Tuple2 is WIT's tuple<T0, T1>.
type Tuple2[T0 any, T1 any] struct {
	F0 T0
	F1 T1
}
