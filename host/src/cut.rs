//! Bounded text: what the host keeps or shows of text a plugin or a sink
//! may make of any size (a failure's reason, a request body).

use std::borrow::Cow;

/// `text` cut to at most `max` bytes (at least the marker's worth), at a
/// character boundary, ending with how many bytes were cut.
pub fn truncate(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    // The marker names at most 20 digits: reserve room for the longest.
    const MARKER: usize = " [cut: 18446744073709551615 more bytes]".len();
    let mut end = max.saturating_sub(MARKER);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{} [cut: {} more bytes]",
        &text[..end],
        text.len() - end
    ))
}
