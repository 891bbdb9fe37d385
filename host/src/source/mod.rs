//! Sources of events. Each yields raw messages with their position; decoding
//! and dispatch are the same whatever the source.

pub mod file;
pub mod kafka;
