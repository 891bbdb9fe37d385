//! The `booking.v1` event schema, generated from `proto/` by prost (and pbjson
//! for the proto3 JSON mapping) at build time.

#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/booking.v1.rs"));
include!(concat!(env!("OUT_DIR"), "/booking.v1.serde.rs"));

/// The full name of the event message the host is compiled for.
pub const MESSAGE: &str = "booking.v1.BookingEvent";
