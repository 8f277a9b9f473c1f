//! CRI container log files, as containerd writes them: one entry a line,
//! `<RFC3339 time> <stdout|stderr> <F|P> <text>`. A `P` (partial) entry continues in the next
//! entry of its stream; an `F` (full) entry ends a line whose newline was dropped.

use anyhow::{bail, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub time: String,
    pub stream: String,
    pub tag: String,
    pub text: String,
}

/// The complete entries of `text`; a last line still being written (no newline yet) is left
/// out. A line that is not a CRI log entry is an error naming it.
pub fn parse(text: &str) -> Result<Vec<Entry>> {
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => return Ok(Vec::new()),
    };
    let mut entries = Vec::new();
    for (n, line) in complete.split('\n').enumerate() {
        let mut parts = line.splitn(4, ' ');
        let (time, stream, tag) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let text = parts.next().unwrap_or_default();
        if !looks_rfc3339(time)
            || !matches!(stream, "stdout" | "stderr")
            || !matches!(tag, "P" | "F")
        {
            bail!(
                "log line {} is not `<time> <stream> <P|F> <text>`: {:?}",
                n + 1,
                clip(line, 120)
            );
        }
        entries.push(Entry {
            time: time.to_string(),
            stream: stream.to_string(),
            tag: tag.to_string(),
            text: text.to_string(),
        });
    }
    Ok(entries)
}

/// `2026-12-02T11:31:42.123456789Z` or with an offset: a date, a `T`, a time.
fn looks_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
}

/// Whether some entry is exactly `<stream> <tag> <text>`.
pub fn has(entries: &[Entry], stream: &str, tag: &str, text: &str) -> bool {
    entries
        .iter()
        .any(|e| e.stream == stream && e.tag == tag && e.text == text)
}

/// The bytes `stream` carried: partial entries joined, each full entry ending a line.
pub fn reassemble(entries: &[Entry], stream: &str) -> String {
    let mut out = String::new();
    for e in entries.iter().filter(|e| e.stream == stream) {
        out.push_str(&e.text);
        if e.tag == "F" {
            out.push('\n');
        }
    }
    out
}

/// At most `max` characters of `s`, marked when cut.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…(+{} bytes)", &s[..i], s.len() - i),
        None => s.to_string(),
    }
}

/// The last `n` lines of a log, for failure messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| clip(l, 160))
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "2026-12-02T11:31:42.123456789Z";

    #[test]
    fn parses_entries_and_skips_an_unfinished_last_line() {
        let text =
            format!("{T} stdout F hello cri\n{T} stderr P par\n{T} stderr F tial\n{T} stdout F");
        let e = parse(&text).unwrap();
        assert_eq!(e.len(), 3);
        assert!(has(&e, "stdout", "F", "hello cri"));
        assert_eq!(reassemble(&e, "stderr"), "partial\n");
        assert_eq!(reassemble(&e, "stdout"), "hello cri\n");
    }

    #[test]
    fn empty_lines_and_offsets() {
        let text = format!("{T} stdout F \n2026-12-02T11:31:42+01:00 stdout F x\n");
        let e = parse(&text).unwrap();
        assert_eq!(reassemble(&e, "stdout"), "\nx\n");
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn rejects_what_is_not_a_cri_entry() {
        assert!(parse("hello-cri\n").is_err());
        assert!(parse(&format!("{T} stdin F x\n")).is_err());
        assert!(parse(&format!("{T} stdout X x\n")).is_err());
    }

    #[test]
    fn clips_long_text() {
        assert_eq!(clip("abcdef", 3), "abc…(+3 bytes)");
        assert_eq!(clip("abc", 3), "abc");
    }
}
