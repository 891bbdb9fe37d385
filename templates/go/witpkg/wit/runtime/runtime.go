// Package runtime is what the generated bindings need at run time: memory
// the host writes into (cabi_realloc) and handles of resources.
//
// The host calls cabi_realloc while it lowers arguments into the guest, and
// then no import may be called. Go's allocator may consult a clock (a WASI
// import) at any allocation, so cabi_realloc serves memory from a static
// arena instead, which Reset empties; a plugin calls Reset when a call's
// arguments are no longer used (the end of `handle`). Strings lifted from
// arguments point into the arena: copy (strings.Clone) what you keep.
package runtime

import (
	"runtime"
	"unsafe"
)

const arenaSize = 32 << 20

var (
	arena     [arenaSize]byte
	arenaUsed uintptr
	// The preview1 adapter's allocations: kept for the life of the instance.
	adapterArena [1 << 20]byte
	adapterUsed  uintptr
)

func bump(buf []byte, used *uintptr, size, align uintptr, what string) unsafe.Pointer {
	base := uintptr(unsafe.Pointer(&buf[0]))
	start := (base + *used + align - 1) &^ (align - 1)
	if start+size > base+uintptr(len(buf)) {
		panic(what + " exhausted: a call passed more data than it holds")
	}
	*used = start + size - base
	return unsafe.Pointer(start)
}

//go:wasmexport cabi_realloc
func cabiRealloc(ptr, oldSize, align, newSize uint32) uint32 {
	p := bump(arena[:], &arenaUsed, uintptr(newSize), uintptr(align), "argument arena")
	if oldSize > 0 {
		copy(unsafe.Slice((*byte)(p), newSize), unsafe.Slice((*byte)(unsafe.Pointer(uintptr(ptr))), oldSize))
	}
	return uint32(uintptr(p))
}

//go:wasmexport cabi_realloc_adapter
func cabiReallocAdapter(ptr, oldSize, align, newSize uint32) uint32 {
	p := bump(adapterArena[:], &adapterUsed, uintptr(newSize), uintptr(align), "adapter arena")
	if oldSize > 0 {
		copy(unsafe.Slice((*byte)(p), newSize), unsafe.Slice((*byte)(unsafe.Pointer(uintptr(ptr))), oldSize))
	}
	return uint32(uintptr(p))
}

// Reset empties the argument arena: every string and list lifted from the
// arguments of the current call is invalid afterwards.
func Reset() { arenaUsed = 0 }

// Unpin is called by the bindings once a call's arguments are lifted.
// Arena memory needs no unpinning.
func Unpin() {}

// Allocate returns pinned Go memory for lowering a value into an import.
func Allocate(pinner *runtime.Pinner, size, align uintptr) unsafe.Pointer {
	if size == 0 {
		size = 1
	}
	words := make([]uint64, (size+7)/8)
	p := unsafe.Pointer(&words[0])
	pinner.Pin(p)
	return p
}

// Handle is a resource handle that can be taken once.
type Handle struct {
	value int32
}

func MakeHandle(value int32) *Handle { return &Handle{value} }

// Use returns the handle, keeping it.
func (h *Handle) Use() int32 {
	if h.value == 0 {
		panic("resource handle used after it was taken")
	}
	return h.value
}

// Take returns the handle and gives it up.
func (h *Handle) Take() int32 {
	v := h.Use()
	h.value = 0
	return v
}

// TakeOrNil returns the handle (0 if already taken) and gives it up.
func (h *Handle) TakeOrNil() int32 {
	v := h.value
	h.value = 0
	return v
}

// Set replaces the handle.
func (h *Handle) Set(value int32) { h.value = value }
