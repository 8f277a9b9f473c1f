/// What went wrong with an image, in one line a user understands, naming the image (and the
/// blob, where one is at fault).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {0}: no such file or directory")]
    NotFound(String),
    #[error("image {image}: {reason}")]
    Invalid { image: String, reason: String },
    #[error("building the disk image of {image}: {reason}")]
    Disk { image: String, reason: String },
}

pub(crate) fn invalid(image: &str, reason: impl std::fmt::Display) -> ImageError {
    ImageError::Invalid {
        image: image.into(),
        reason: one_line(&reason.to_string()),
    }
}

/// Tools and parsers sometimes answer on several lines, or quote the binary junk they choked
/// on; an error here is one line of text.
pub(crate) fn one_line(s: &str) -> String {
    let printable: String = s
        .chars()
        .map(|c| {
            if c.is_control() || c == '\u{fffd}' {
                ' '
            } else {
                c
            }
        })
        .collect();
    printable.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_one_printable_line() {
        assert_eq!(one_line("a\nb\x01\u{fffd}c  d\n"), "a b c d");
    }
}
