//! Content digests: the only names Box trusts for image content.

use std::io::{self, Read};

use oci_spec::image::{Digest, DigestAlgorithm};
use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex_of(data))
}

/// The lowercase hex sha256 of `data`.
pub fn sha256_hex_of(data: &[u8]) -> String {
    hex(Sha256::digest(data))
}

pub(crate) fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The hex of a sha256 digest, or why it cannot name a blob. Only sha256 is accepted (what
/// every registry and builder writes); the hex is checked here too, since it becomes a file
/// name.
pub(crate) fn sha256_hex(d: &Digest) -> Result<&str, String> {
    if *d.algorithm() != DigestAlgorithm::Sha256 {
        return Err(format!(
            "digest {d}: algorithm {} is not supported (only sha256)",
            d.algorithm()
        ));
    }
    let h = d.digest();
    if h.len() != 64
        || !h
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("digest {d}: not 64 lowercase hex digits"));
    }
    Ok(h)
}

/// Parses a digest string from an untrusted document.
pub(crate) fn parse(s: &str) -> Result<Digest, String> {
    let d: Digest = s.parse().map_err(|_| format!("{s:?} is not a digest"))?;
    sha256_hex(&d)?;
    Ok(d)
}

/// A reader that hashes and counts what passes through it, and refuses to pass more than
/// `limit` bytes (the error says so, and [`Hashing::over_limit`] tells it apart).
pub(crate) struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
    limit: u64,
    over: bool,
    /// The inner reader's own error, if it failed (e.g. a corrupt gzip stream), as opposed to
    /// an error of whoever reads from this one.
    pub(crate) inner_error: Option<String>,
}

impl<R: Read> Hashing<R> {
    pub(crate) fn new(inner: R, limit: u64) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
            limit,
            over: false,
            inner_error: None,
        }
    }

    pub(crate) fn over_limit(&self) -> bool {
        self.over
    }

    /// Reads what is left (up to the limit) and returns `(hex digest, bytes)`.
    pub(crate) fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((hex(self.hasher.finalize()), self.bytes))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.over {
            return Err(io::Error::other("size limit exceeded"));
        }
        // One byte past the limit is enough to know it was exceeded.
        let room = (self.limit - self.bytes).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = match self.inner.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) => {
                self.inner_error = Some(e.to_string());
                return Err(e);
            }
        };
        if self.bytes + n as u64 > self.limit {
            self.over = true;
            return Err(io::Error::other("size limit exceeded"));
        }
        self.bytes += n as u64;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_digest(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn digests_that_could_not_name_a_blob_are_refused() {
        assert!(parse(&sha256_digest(b"x")).is_ok());
        for bad in [
            "sha256:../../etc/passwd",
            "sha256:ABCDEF",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha512:00",
            "nonsense",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
        let upper = sha256_digest(b"x")
            .to_uppercase()
            .replace("SHA256", "sha256");
        assert!(parse(&upper).is_err());
    }

    #[test]
    fn hashing_reader_stops_one_past_its_limit() {
        let mut r = Hashing::new(&[7u8; 100][..], 10);
        let err = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert_eq!(err.to_string(), "size limit exceeded");
        assert!(r.over_limit());
        let r = Hashing::new(&b"abc"[..], 3);
        let (h, n) = r.finish().unwrap();
        assert_eq!((format!("sha256:{h}"), n), (sha256_digest(b"abc"), 3));
    }
}
