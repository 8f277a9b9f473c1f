//! containerd 2.x for the k8s tier, from Debian sid, without touching the system's apt setup.
//!
//! Bookworm's containerd (1.6) and trixie's (1.7) cannot start a shim built on the
//! `containerd-shim` crate 0.12 (shared/docs/kubernetes.md); sid's 2.x can, and runs on bookworm
//! (it needs only libc >= 2.34). It is fetched through a private apt directory: its own
//! `sources.list` naming sid on this machine's Debian mirror, its own lists and cache, no system
//! sources, preferences or update hooks; then `apt-get download` and `dpkg-deb -x`. Only the
//! `containerd` and `ctr` binaries are kept, under `target/box-images/containerd/<version>/`.
//!
//! A cached copy is used without any network work; sid moves, so a newer one is fetched only
//! when asked (`cargo xtask k8s --refresh-containerd`). Any 2.x is accepted.

use crate::{host, paths};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const PACKAGE: &str = "containerd";
const SUITE: &str = "sid";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Debian's archive keys (package `debian-archive-keyring`, priority important): sid's Release
/// file is signed with them.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// In a cache entry: `<containerd version> <package version>`, written last (the entry is whole).
const VERSION_FILE: &str = "version";
/// In the cache dir: the name of the entry in use.
const CURRENT: &str = "current";

#[derive(Debug, Clone)]
pub struct Containerd {
    pub containerd: PathBuf,
    pub ctr: PathBuf,
    /// What `containerd --version` says, e.g. `2.1.9+unknown`.
    pub version: String,
    /// The Debian package's version, e.g. `2.1.9+ds1-5`.
    pub package_version: String,
}

/// The cached containerd, fetching it first if there is none (or if `refresh`).
pub fn fetch(refresh: bool) -> Result<Containerd> {
    let cache = paths::images_dir().join("containerd");
    if !refresh {
        if let Some(c) = cached(&cache) {
            return Ok(c);
        }
    }
    let t0 = Instant::now();
    let c = download(&cache)?;
    eprintln!(
        "xtask: fetched containerd {} (Debian {SUITE} {PACKAGE} {}) in {:.1} s",
        c.version,
        c.package_version,
        t0.elapsed().as_secs_f64()
    );
    Ok(c)
}

fn cached(cache: &Path) -> Option<Containerd> {
    let name = fs::read_to_string(cache.join(CURRENT)).ok()?;
    load(&cache.join(name.trim())).ok()
}

fn load(dir: &Path) -> Result<Containerd> {
    let text = fs::read_to_string(dir.join(VERSION_FILE))
        .with_context(|| format!("{}: incomplete cache entry", dir.display()))?;
    let [version, package_version] = text.split_whitespace().collect::<Vec<_>>()[..] else {
        bail!("{}: malformed {VERSION_FILE} file", dir.display());
    };
    let c = Containerd {
        containerd: dir.join("containerd"),
        ctr: dir.join("ctr"),
        version: version.into(),
        package_version: package_version.into(),
    };
    for bin in [&c.containerd, &c.ctr] {
        if !bin.is_file() {
            bail!("{} is missing", bin.display());
        }
    }
    Ok(c)
}

fn download(cache: &Path) -> Result<Containerd> {
    host::ensure_node_tools()?; // dpkg-deb
    if !Path::new(KEYRING).exists() {
        bail!("{KEYRING} is missing: install debian-archive-keyring (it verifies Debian {SUITE}'s Release file)");
    }
    let mirror = system_mirror();
    let pid = std::process::id();
    let work = cache.join(format!(".apt-partial-{pid}"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    // apt.conf names it, and apt runs elsewhere: it must be absolute ($CARGO_TARGET_DIR may not be).
    let work = fs::canonicalize(&work)?;
    let result = download_in(cache, &work, &mirror);
    let _ = fs::remove_dir_all(&work);
    result.with_context(|| format!("fetching {PACKAGE} from Debian {SUITE} ({mirror})"))
}

fn download_in(cache: &Path, work: &Path, mirror: &str) -> Result<Containerd> {
    for d in [
        "lists/partial",
        "cache/archives/partial",
        "sources.list.d",
        "preferences.d",
    ] {
        fs::create_dir_all(work.join(d))?;
    }
    fs::write(
        work.join("sources.list"),
        format!("deb [signed-by={KEYRING}] {mirror} {SUITE} main\n"),
    )?;
    let conf = work.join("apt.conf");
    fs::write(&conf, apt_conf(work))?;
    eprintln!(
        "xtask: fetching {PACKAGE} from Debian {SUITE} ({mirror}) into a private apt directory"
    );
    let apt = || {
        let mut c = Command::new("apt-get");
        c.arg("-c").arg(&conf).arg("-qq").current_dir(work);
        c
    };
    host::run(apt().arg("update"))?;
    host::run(apt().args(["download", PACKAGE]))?;
    let deb = fs::read_dir(work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let out = host::run(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg("Version"),
    )?;
    let package_version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let x = work.join("x");
    host::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x))?;
    let bin = x.join("usr/bin");
    let out = host::run(Command::new(bin.join("containerd")).arg("--version"))?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let version = parse_version(&said).with_context(|| {
        format!("`containerd --version` of Debian {SUITE}'s {PACKAGE} {package_version} printed [{said}]")
    })?;
    if !version.starts_with("2.") {
        bail!(
            "Debian {SUITE}'s {PACKAGE} {package_version} is containerd {version}; the k8s tier needs 2.x \
             (1.x cannot start the Box shim, see shared/docs/kubernetes.md)"
        );
    }
    // No `:` (an epoch) in the path: `--file SRC:DEST` splits on it.
    let name = format!("{PACKAGE}_{}", package_version.replace(':', "_"));
    let tmp = work.join("entry");
    fs::create_dir_all(&tmp)?;
    for b in ["containerd", "ctr"] {
        fs::rename(bin.join(b), tmp.join(b))
            .with_context(|| format!("{PACKAGE} has no usr/bin/{b}"))?;
    }
    fs::write(
        tmp.join(VERSION_FILE),
        format!("{version} {package_version}\n"),
    )?;
    let dir = cache.join(&name);
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir)?;
    fs::write(cache.join(CURRENT), format!("{name}\n"))?;
    // Older versions are dead weight (64 MB each).
    for e in fs::read_dir(cache)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&format!("{PACKAGE}_")) && n != name {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    load(&dir)
}

/// The private apt configuration, read after the system's (`apt-get -c`): everything apt
/// reads or writes for this fetch lives under `work`; the system's sources, preferences and
/// lists are not used, and its update hooks (appstream, PackageKit) do not run. The system's
/// other settings (a proxy, say) still apply.
fn apt_conf(work: &Path) -> String {
    let w = work.display();
    format!(
        r#"Dir::Etc::SourceList "{w}/sources.list";
Dir::Etc::SourceParts "{w}/sources.list.d";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "{w}/preferences.d";
Dir::State::Lists "{w}/lists";
Dir::Cache "{w}/cache";
Acquire::Languages "none";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled "false";
APT::Sandbox::User "root";
#clear APT::Update::Post-Invoke-Success;
#clear APT::Update::Post-Invoke;
"#
    )
}

/// `containerd github.com/containerd/containerd/v2 2.1.9+unknown` → `2.1.9+unknown`.
fn parse_version(said: &str) -> Option<String> {
    let words: Vec<&str> = said.split_whitespace().collect();
    match words[..] {
        ["containerd", _, v, ..] => Some(v.trim_start_matches('v').to_string()),
        _ => None,
    }
}

/// The Debian mirror this machine's apt uses (the same host for sid), else deb.debian.org.
fn system_mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    let text: String = files
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .collect::<Vec<_>>()
        .join("\n");
    pick_mirror(&text).unwrap_or_else(|| DEFAULT_MIRROR.to_string())
}

/// The first Debian archive URI (ending in `/debian`) in one-line (`deb [opts] URI suite ...`)
/// or deb822 (`URIs: ...`) sources. snapshot.debian.org is skipped: a dated snapshot's sid is
/// as old as the snapshot.
fn pick_mirror(sources: &str) -> Option<String> {
    for line in sources.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let uris: Vec<&str> = if let Some(rest) = line.strip_prefix("URIs:") {
            rest.split_whitespace().collect()
        } else if let Some(rest) = line.strip_prefix("deb ") {
            let rest = rest.trim_start();
            let rest = match rest.strip_prefix('[') {
                Some(opts) => opts.split_once(']').map_or("", |(_, r)| r),
                None => rest,
            };
            rest.split_whitespace().take(1).collect()
        } else {
            continue;
        };
        for u in uris {
            let u = u.trim_end_matches('/');
            if (u.starts_with("http://") || u.starts_with("https://"))
                && u.ends_with("/debian")
                && !u.contains("snapshot.debian.org")
            {
                return Some(u.to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_comes_from_either_sources_format() {
        let deb822 = "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\nURIs: http://mirror.example.org/debian/\nSuites: bookworm\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\n";
        assert_eq!(
            pick_mirror(deb822).as_deref(),
            Some("http://mirror.example.org/debian")
        );
        let oneline = "# deb http://commented.example/debian bookworm main\ndeb https://packages.cloud.google.com/apt cloud-sdk main\ndeb [ arch=amd64 signed-by=/k.gpg ] https://ftp.example.net/debian bookworm main\n";
        assert_eq!(
            pick_mirror(oneline).as_deref(),
            Some("https://ftp.example.net/debian")
        );
        let snapshot_only = "deb http://snapshot.debian.org/archive/debian/20250520T000000Z bookworm main\ndeb-src http://src.example/debian bookworm main\n";
        assert_eq!(pick_mirror(snapshot_only), None);
    }

    #[test]
    fn containerd_version_lines_parse() {
        assert_eq!(
            parse_version("containerd github.com/containerd/containerd/v2 2.1.9+unknown ")
                .as_deref(),
            Some("2.1.9+unknown")
        );
        assert_eq!(
            parse_version("containerd github.com/containerd/containerd v1.6.20 2806fc1").as_deref(),
            Some("1.6.20")
        );
        assert_eq!(parse_version("something else"), None);
    }

    #[test]
    fn the_private_apt_config_names_only_private_paths() {
        let conf = apt_conf(Path::new("/cache/apt"));
        for key in [
            "Dir::Etc::SourceList \"/cache/apt/",
            "Dir::Etc::SourceParts \"/cache/apt/",
            "Dir::State::Lists \"/cache/apt/",
            "Dir::Cache \"/cache/apt/",
        ] {
            assert!(conf.contains(key), "{key} missing from\n{conf}");
        }
    }
}
