//! A tar of an OCI image layout (`skopeo copy ... oci-archive:`, `buildah push`), copied into
//! the cache as a layout without unpacking the tar onto disk: only `oci-layout`,
//! `index.json` and `blobs/sha256/<hex>` regular files are taken, each blob hashed as it is
//! written and kept only if it matches its name. Links, devices, other names and `..` in the
//! archive are never acted on.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::Hashing;
use crate::Limits;

/// The layout of the tar at `path`, under `cache/layouts/<sha256 of the tar>`.
pub(crate) fn import(path: &Path, cache: &Path, limits: &Limits) -> Result<PathBuf, String> {
    let (key, _) = Hashing::new(open(path)?, u64::MAX)
        .finish()
        .map_err(|e| format!("reading the tar: {e}"))?;
    let dest = cache.join("layouts").join(&key);
    if dest.join("index.json").exists() {
        return Ok(dest);
    }
    crate::write::build_dir(&dest, |tmp| copy_out(path, &key, tmp, limits))?;
    Ok(dest)
}

fn open(path: &Path) -> Result<File, String> {
    File::open(path).map_err(|e| format!("opening the tar: {e}"))
}

fn copy_out(path: &Path, key: &str, tmp: &Path, limits: &Limits) -> Result<(), String> {
    let mut whole = BufReader::new(Hashing::new(open(path)?, u64::MAX));
    let gz = whole
        .fill_buf()
        .map(|b| b.starts_with(&[0x1f, 0x8b]))
        .map_err(|e| format!("reading the tar: {e}"))?;
    let decoder: Box<dyn Read + '_> = if gz {
        Box::new(flate2::bufread::MultiGzDecoder::new(&mut whole))
    } else {
        Box::new(&mut whole)
    };
    let mut stream = Hashing::new(decoder, limits.max_bytes.saturating_mul(2));
    let blobs = tmp.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| e.to_string())?;
    let mut found_index = false;
    let res = (|| -> Result<(), String> {
        let mut a = tar::Archive::new(&mut stream);
        for entry in a
            .entries()
            .map_err(|e| format!("not a valid tar archive ({e})"))?
        {
            let mut e = entry.map_err(|e| format!("not a valid tar archive ({e})"))?;
            if e.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let raw = e.path_bytes().into_owned();
            let name = String::from_utf8_lossy(&raw);
            let name = name.trim_start_matches("./");
            match name {
                "index.json" | "oci-layout" => {
                    let mut data = Vec::new();
                    (&mut e)
                        .take(limits.max_json + 1)
                        .read_to_end(&mut data)
                        .map_err(|e| format!("reading {name} from the tar: {e}"))?;
                    if data.len() as u64 > limits.max_json {
                        return Err(format!("{name} is larger than {} bytes", limits.max_json));
                    }
                    std::fs::write(tmp.join(name), data).map_err(|e| e.to_string())?;
                    found_index |= name == "index.json";
                }
                _ => {
                    let Some(hex) = name.strip_prefix("blobs/sha256/") else {
                        continue;
                    };
                    if hex.len() != 64
                        || !hex
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                    {
                        continue;
                    }
                    copy_blob(&mut e, hex, &blobs, limits)?;
                }
            }
        }
        Ok(())
    })();
    if stream.over_limit() {
        return Err(format!(
            "the tar decompresses to more than {} bytes",
            limits.max_bytes.saturating_mul(2)
        ));
    }
    if let (Err(_), Some(d)) = (&res, &stream.inner_error) {
        return Err(format!("corrupt gzip data in the tar ({d})"));
    }
    res?;
    if !found_index {
        return Err("the tar holds no OCI image layout (index.json)".into());
    }
    drop(stream);
    io::copy(&mut whole, &mut io::sink()).map_err(|e| e.to_string())?;
    let (again, _) = whole
        .into_inner()
        .finish()
        .map_err(|e| format!("reading the tar: {e}"))?;
    if again != key {
        return Err("the tar changed while it was being read".into());
    }
    Ok(())
}

fn copy_blob(e: &mut impl Read, hex: &str, blobs: &Path, limits: &Limits) -> Result<(), String> {
    let dest = blobs.join(hex);
    let mut out = File::create(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    let mut r = Hashing::new(e, limits.max_bytes);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = r.read(&mut buf).map_err(|err| {
            if r.over_limit() {
                format!(
                    "blob sha256:{hex} is larger than {} bytes",
                    limits.max_bytes
                )
            } else {
                format!("reading blob sha256:{hex} from the tar: {err}")
            }
        })?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .map_err(|e| format!("{}: {e}", dest.display()))?;
    }
    let (got, _) = r.finish().map_err(|e| e.to_string())?;
    if got != hex {
        return Err(format!(
            "blob sha256:{hex} in the tar does not match its digest (its content is sha256:{got})"
        ));
    }
    Ok(())
}
