//! Hostile images, built here, against the real import path ([`box_images::resolve_with`]).
//!
//! Each case plants a canary on the host beside the cache and points the image at it
//! (absolute and relative symlinks, `..`, whiteouts, hardlinks, blob names, tar entries).
//! After every case the canary must be byte-for-byte untouched, and the import must either
//! fail with one readable line or succeed harmlessly (whatever was aimed at the host landed
//! inside the image's own root).

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use box_images::write::{self, ImageSpec, LayoutWriter, CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};
use box_images::{resolve_with, sha256_digest, Limits, ResolvedImage};
use serde_json::json;

enum Kind<'a> {
    File(&'a [u8]),
    Mode(&'a [u8], u32, u64),
    Dir,
    Symlink(&'a str),
    Hardlink(&'a str),
    Char(u32, u32),
    Fifo,
    Declared(u64),
}

/// A tar whose names and link targets are written as given: `tar::Builder` refuses `..`, and
/// hostile layers are exactly what it refuses.
fn tar(entries: &[(&str, Kind)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind) in entries {
        let name = name.as_bytes();
        if name.len() >= 100 {
            let mut l = tar::Header::new_gnu();
            l.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
            l.set_entry_type(tar::EntryType::GNULongName);
            l.set_size(name.len() as u64 + 1);
            l.set_mode(0o644);
            l.set_cksum();
            let mut data = name.to_vec();
            data.push(0);
            b.append(&l, data.as_slice()).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        let n = name.len().min(99);
        h.as_gnu_mut().unwrap().name[..n].copy_from_slice(&name[..n]);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_000_000);
        h.set_mode(0o644);
        h.set_size(0);
        let mut data: &[u8] = &[];
        let link = |h: &mut tar::Header, t: &str| {
            h.as_gnu_mut().unwrap().linkname[..t.len()].copy_from_slice(t.as_bytes());
        };
        match kind {
            Kind::File(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                data = d;
            }
            Kind::Mode(d, mode, uid) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                h.set_mode(*mode);
                h.set_uid(*uid);
                data = d;
            }
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
            }
            Kind::Symlink(t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                link(&mut h, t);
            }
            Kind::Hardlink(t) => {
                h.set_entry_type(tar::EntryType::Link);
                link(&mut h, t);
            }
            Kind::Char(ma, mi) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_device_major(*ma).unwrap();
                h.set_device_minor(*mi).unwrap();
            }
            Kind::Fifo => h.set_entry_type(tar::EntryType::Fifo),
            Kind::Declared(size) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(*size);
            }
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

struct Case {
    dir: PathBuf,
    canary: PathBuf,
    before: Vec<String>,
}

/// Every path under `root` with its type, mode, owner and content.
fn snapshot(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let body = if m.is_file() {
            format!("{:?}", fs::read(&p).unwrap())
        } else if m.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            stack.extend(names);
            "dir".into()
        } else {
            format!("{:?}", fs::read_link(&p).ok())
        };
        out.push(format!("{} {:o} {} {body}", p.display(), m.mode(), m.uid()));
    }
    out.sort();
    out
}

impl Case {
    fn new(tag: &str) -> Case {
        let dir = std::env::temp_dir().join(format!("box-hostile-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let canary = dir.join("canary");
        fs::create_dir_all(canary.join("sub")).unwrap();
        fs::write(canary.join("precious"), b"precious").unwrap();
        fs::write(canary.join("sub/inner"), b"inner").unwrap();
        let before = snapshot(&canary);
        Case {
            dir,
            canary,
            before,
        }
    }

    /// The canary's absolute path, as an image names it.
    fn c(&self, rest: &str) -> String {
        format!("{}{rest}", self.canary.display())
    }

    fn layout(&self) -> PathBuf {
        self.dir.join("image")
    }

    fn cache(&self) -> PathBuf {
        self.dir.join("cache")
    }

    fn run_with(&self, layers: &[Vec<u8>], limits: &Limits) -> Result<ResolvedImage, String> {
        let _ = fs::remove_dir_all(self.layout());
        write::write_layout(&self.layout(), layers, &ImageSpec::default(), "hostile").unwrap();
        self.resolve(limits)
    }

    fn run(&self, layers: &[Vec<u8>]) -> Result<ResolvedImage, String> {
        self.run_with(layers, &Limits::default())
    }

    fn resolve(&self, limits: &Limits) -> Result<ResolvedImage, String> {
        resolve_with(self.layout().to_str().unwrap(), &self.cache(), limits)
            .map_err(|e| e.to_string())
    }

    /// The import failed with one line containing `want`, the canary is untouched and the
    /// cache holds no unpacked root (no entry, no leftover temporary).
    fn refused(&self, r: Result<ResolvedImage, String>, want: &str) -> String {
        let e = match r {
            Ok(img) => panic!("accepted: {}", img.rootfs.display()),
            Err(e) => e,
        };
        eprintln!("refused: {e}");
        assert!(e.contains(want), "{e:?} lacks {want:?}");
        assert!(!e.contains('\n'), "not one line: {e:?}");
        assert!(e.starts_with("image "), "{e}");
        for sub in ["rootfs", "layouts"] {
            let Ok(rd) = fs::read_dir(self.cache().join(sub)) else {
                continue;
            };
            for e in rd {
                let n = e.unwrap().file_name();
                assert!(
                    !n.to_string_lossy().starts_with(".tmp-"),
                    "half-built {n:?} left"
                );
            }
        }
        self.untouched();
        e
    }

    fn untouched(&self) {
        assert_eq!(
            snapshot(&self.canary),
            self.before,
            "the host canary changed"
        );
    }

    /// Where the image's own root holds a path the image aimed at the host canary.
    fn inside(img: &ResolvedImage, host_path: &str) -> PathBuf {
        img.rootfs.join(host_path.trim_start_matches('/'))
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_file_written_through_a_planted_symlink_stays_inside() {
    let k = Case::new("write-through");
    let abs = k.c("");
    let rel = format!("../../../../../../../..{abs}");
    let img = k
        .run(&[
            tar(&[
                ("evil", Kind::Symlink(&abs)),
                ("evil2", Kind::Symlink(&rel)),
            ]),
            tar(&[
                ("evil/precious", Kind::File(b"pwned")),
                ("evil2/sub/inner", Kind::File(b"pwned")),
                ("evil/new/deep", Kind::File(b"pwned")),
            ]),
        ])
        .unwrap();
    k.untouched();
    assert_eq!(
        fs::read(Case::inside(&img, &k.c("/precious"))).unwrap(),
        b"pwned"
    );
    assert_eq!(
        fs::read(Case::inside(&img, &k.c("/sub/inner"))).unwrap(),
        b"pwned"
    );
    assert!(Case::inside(&img, &k.c("/new/deep")).is_file());
}

#[test]
fn whiteouts_through_a_planted_symlink_remove_nothing_outside() {
    let k = Case::new("whiteout-through");
    let abs = k.c("");
    k.run(&[
        tar(&[
            ("evil", Kind::Symlink(&abs)),
            ("evil3", Kind::Symlink(&abs)),
        ]),
        tar(&[
            ("evil/.wh.precious", Kind::File(b"")),
            ("evil/.wh.sub", Kind::File(b"")),
            ("evil3/.wh..wh..opq", Kind::File(b"")),
        ]),
    ])
    .unwrap();
    k.untouched();
}

#[test]
fn whiteouts_naming_dot_or_dotdot_are_refused() {
    for (n, name) in ["a/.wh..", "a/.wh...", ".wh..."].iter().enumerate() {
        let k = Case::new(&format!("wh-dots-{n}"));
        let r = k.run(&[
            tar(&[("a/b", Kind::File(b"x"))]),
            tar(&[(name, Kind::File(b""))]),
        ]);
        k.refused(r, "names no entry");
    }
}

#[test]
fn whiteouts_remove_only_lower_layers_entries() {
    let k = Case::new("wh-lower");
    let img = k
        .run(&[
            tar(&[("d/old", Kind::File(b"o")), ("e/gone", Kind::File(b"g"))]),
            tar(&[
                ("d/new", Kind::File(b"n")),
                ("d/.wh..wh..opq", Kind::File(b"")),
                ("e/mine", Kind::File(b"m")),
                ("e/.wh.mine", Kind::File(b"")),
                ("e/.wh.gone", Kind::File(b"")),
            ]),
        ])
        .unwrap();
    assert!(!img.rootfs.join("d/old").exists());
    assert_eq!(fs::read(img.rootfs.join("d/new")).unwrap(), b"n");
    assert_eq!(fs::read(img.rootfs.join("e/mine")).unwrap(), b"m");
    assert!(!img.rootfs.join("e/gone").exists());
    k.untouched();
}

#[test]
fn dotdot_and_absolute_names_land_inside() {
    let k = Case::new("names");
    let up = format!("../../../../../../../../..{}", k.c("/precious"));
    let abs = k.c("/sub/inner");
    let img = k
        .run(&[tar(&[
            (&up, Kind::File(b"pwned")),
            (&abs, Kind::File(b"pwned")),
        ])])
        .unwrap();
    k.untouched();
    assert_eq!(
        fs::read(Case::inside(&img, &k.c("/precious"))).unwrap(),
        b"pwned"
    );
    assert_eq!(fs::read(Case::inside(&img, &abs)).unwrap(), b"pwned");
}

#[test]
fn hardlinks_to_the_host_are_refused() {
    let k = Case::new("hardlinks");
    let abs = k.c("/precious");
    let r = k.run(&[tar(&[("stolen", Kind::Hardlink(&abs))])]);
    k.refused(r, "not in this image");
    let up = format!("../../../../../../../..{abs}");
    let r = k.run(&[tar(&[("stolen", Kind::Hardlink(&up))])]);
    k.refused(r, "not in this image");
    let dir = k.c("");
    let r = k.run(&[
        tar(&[("evil", Kind::Symlink(&dir))]),
        tar(&[("stolen", Kind::Hardlink("evil/precious"))]),
    ]);
    k.refused(r, "not in this image");
    // Inside the image, a hardlink is a hardlink.
    let img = k
        .run(&[tar(&[("a", Kind::File(b"a")), ("b", Kind::Hardlink("a"))])])
        .unwrap();
    let (a, b) = (
        fs::metadata(img.rootfs.join("a")).unwrap(),
        fs::metadata(img.rootfs.join("b")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
}

#[test]
fn a_file_replaces_a_symlink_instead_of_writing_through_it() {
    let k = Case::new("replace-link");
    let target = k.c("/precious");
    let img = k
        .run(&[
            tar(&[("f", Kind::Symlink(&target))]),
            tar(&[("f", Kind::File(b"pwned")), ("f", Kind::Dir)]),
        ])
        .unwrap();
    k.untouched();
    assert!(img.rootfs.join("f").is_dir());
}

#[test]
fn symlink_loops_are_an_error() {
    let k = Case::new("loop");
    let r = k.run(&[
        tar(&[("a", Kind::Symlink("b")), ("b", Kind::Symlink("/a"))]),
        tar(&[("a/file", Kind::File(b"x"))]),
    ]);
    let e = k.refused(r, "/a");
    assert!(e.contains("symbolic links"), "{e}");
}

#[test]
fn device_nodes_follow_the_policy() {
    let k = Case::new("devices");
    let img = k
        .run(&[tar(&[
            ("dev/sda", Kind::Char(8, 0)),
            ("run/fifo", Kind::Fifo),
            ("bin/su", Kind::Mode(b"su", 0o4755, 1000)),
        ])])
        .unwrap();
    assert!(fs::symlink_metadata(img.rootfs.join("dev/sda")).is_err());
    assert_eq!(img.skipped, vec!["/dev/sda".to_string()]);
    let fifo = fs::symlink_metadata(img.rootfs.join("run/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    let su = fs::metadata(img.rootfs.join("bin/su")).unwrap();
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755);
    if nix::unistd::geteuid().is_root() {
        assert_eq!(su.uid(), 1000);
        // The cache itself is root's alone, so that setuid file is out of host users' reach.
        let cache = fs::metadata(k.cache()).unwrap();
        assert_eq!(cache.permissions().mode() & 0o777, 0o700);
    }
}

#[test]
fn sizes_counts_and_lengths_are_bounded() {
    let k = Case::new("limits");
    let r = k.run(&[tar(&[("big", Kind::Declared(1 << 40))])]);
    k.refused(r, "size limit");

    let zeros = vec![0u8; 64 << 20];
    let small = Limits {
        max_bytes: 16 << 20,
        ..Limits::default()
    };
    let r = k.run_with(&[tar(&[("bomb", Kind::File(&zeros))])], &small);
    k.refused(r, "size limit");

    let names: Vec<String> = (0..60).map(|i| format!("f{i}")).collect();
    let many: Vec<(&str, Kind)> = names
        .iter()
        .map(|n| (n.as_str(), Kind::File(b"")))
        .collect();
    let few = Limits {
        max_entries: 50,
        ..Limits::default()
    };
    let r = k.run_with(&[tar(&many)], &few);
    k.refused(r, "entry limit");

    let long = "d/".repeat(2500);
    let r = k.run(&[tar(&[(&long, Kind::File(b"x"))])]);
    k.refused(r, "5000 bytes long");

    let two = Limits {
        max_layers: 2,
        ..Limits::default()
    };
    let l = tar(&[("x", Kind::File(b"x"))]);
    let r = k.run_with(&[l.clone(), l.clone(), l], &two);
    k.refused(r, "more than the limit of 2");
}

/// A layout written by hand: `layers` as stored blobs (`(media type, bytes)`), with the
/// given diff_ids. Returns the writer for more tampering.
fn raw_layout(k: &Case, layers: &[(&str, Vec<u8>)], diff_ids: &[String]) -> LayoutWriter {
    let _ = fs::remove_dir_all(k.layout());
    let w = LayoutWriter::create(&k.layout()).unwrap();
    let descs: Vec<_> = layers.iter().map(|(t, b)| w.blob(t, b).unwrap()).collect();
    let config = w
        .json_blob(
            CONFIG_MEDIA_TYPE,
            &json!({"architecture": "amd64", "os": "linux",
                    "rootfs": {"type": "layers", "diff_ids": diff_ids}}),
        )
        .unwrap();
    let m = w
        .json_blob(
            MANIFEST_MEDIA_TYPE,
            &json!({"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
                    "config": config, "layers": descs}),
        )
        .unwrap();
    w.index(vec![m]).unwrap();
    w
}

#[test]
fn blobs_are_checked_against_digest_and_size() {
    let k = Case::new("digests");
    let t = tar(&[("x", Kind::File(b"x"))]);
    let gz = write::gzip(&t);
    raw_layout(
        &k,
        &[(write::LAYER_MEDIA_TYPE, gz.clone())],
        &[sha256_digest(&t)],
    );
    k.resolve(&Limits::default()).unwrap();
    let _ = fs::remove_dir_all(k.cache());
    // The layer's bytes changed under its name.
    let name = &sha256_digest(&gz)["sha256:".len()..];
    let mut bad = gz.clone();
    let last = bad.len() - 9;
    bad[last] ^= 0xff;
    fs::write(k.layout().join("blobs/sha256").join(name), &bad).unwrap();
    let r = k.resolve(&Limits::default());
    k.refused(r, "does not match its digest");
    // Longer than its descriptor says.
    let mut longer = gz.clone();
    longer.extend_from_slice(b"trailing");
    fs::write(k.layout().join("blobs/sha256").join(name), &longer).unwrap();
    let r = k.resolve(&Limits::default());
    k.refused(r, "its descriptor says");
    // A diff_id that is not the layer's content.
    raw_layout(
        &k,
        &[(write::LAYER_MEDIA_TYPE, gz)],
        &[sha256_digest(b"other")],
    );
    let r = k.resolve(&Limits::default());
    k.refused(r, "diff_id");
    // Nothing unverified was ever cached.
    assert_eq!(fs::read_dir(k.cache().join("rootfs")).unwrap().count(), 0);
}

#[test]
fn digests_that_name_paths_or_other_algorithms_are_refused() {
    let k = Case::new("digest-names");
    let w = LayoutWriter::create(&k.layout()).unwrap();
    for (digest, want) in [
        (
            format!("sha256:../../../..{}", k.c("/precious")),
            "index.json",
        ),
        (
            "md5:d41d8cd98f00b204e9800998ecf8427e".to_string(),
            "only sha256",
        ),
        (sha256_digest(b"absent"), "No such file"),
    ] {
        fs::write(
            k.layout().join("index.json"),
            serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
                {"mediaType": MANIFEST_MEDIA_TYPE, "digest": digest, "size": 8}]}))
            .unwrap(),
        )
        .unwrap();
        let r = k.resolve(&Limits::default());
        k.refused(r, want);
    }
    drop(w);
}

#[test]
fn a_blob_that_is_a_symlink_is_not_followed() {
    let k = Case::new("blob-link");
    let t = tar(&[("x", Kind::File(b"x"))]);
    let w = raw_layout(
        &k,
        &[(write::LAYER_MEDIA_TYPE, write::gzip(&t))],
        &[sha256_digest(&t)],
    );
    drop(w);
    // Swap the manifest blob for a symlink to an identical file outside the layout.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(k.layout().join("index.json")).unwrap()).unwrap();
    let hex = &index["manifests"][0]["digest"].as_str().unwrap()["sha256:".len()..];
    let blob = k.layout().join("blobs/sha256").join(hex);
    let outside = k.canary.join("precious-manifest");
    fs::copy(&blob, &outside).unwrap();
    fs::remove_file(&blob).unwrap();
    std::os::unix::fs::symlink(&outside, &blob).unwrap();
    let r = k.resolve(&Limits::default());
    fs::remove_file(&outside).unwrap();
    k.refused(r, "symbolic links");
}

#[test]
fn indexes_nest_only_so_deep() {
    let k = Case::new("nesting");
    let t = tar(&[("x", Kind::File(b"x"))]);
    let w = raw_layout(
        &k,
        &[(write::LAYER_MEDIA_TYPE, write::gzip(&t))],
        &[sha256_digest(&t)],
    );
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(k.layout().join("index.json")).unwrap()).unwrap();
    let mut desc = index["manifests"][0].clone();
    for depth in 1..=6 {
        desc = w
            .json_blob(
                write::INDEX_MEDIA_TYPE,
                &json!({"schemaVersion": 2, "manifests": [desc]}),
            )
            .unwrap();
        w.index(vec![desc.clone()]).unwrap();
        let r = k.resolve(&Limits::default());
        if depth <= 4 {
            r.unwrap();
        } else {
            k.refused(r, "nest deeper than 4");
        }
    }
}

#[test]
fn malformed_documents_and_streams_say_what_is_wrong() {
    let k = Case::new("malformed");
    let w = LayoutWriter::create(&k.layout()).unwrap();
    fs::write(k.layout().join("index.json"), b"{garbage").unwrap();
    let r = k.resolve(&Limits::default());
    k.refused(r, "index.json is not a valid OCI image index");
    let m = w.blob(MANIFEST_MEDIA_TYPE, b"[1, 2, 3]").unwrap();
    w.index(vec![m]).unwrap();
    let r = k.resolve(&Limits::default());
    k.refused(r, "is not a valid image manifest");

    let junk = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03this is not deflate data at all".to_vec();
    raw_layout(
        &k,
        &[(write::LAYER_MEDIA_TYPE, junk)],
        &[sha256_digest(b"x")],
    );
    let r = k.resolve(&Limits::default());
    k.refused(r, "corrupt gzip data");

    let noise: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    raw_layout(
        &k,
        &[("application/vnd.oci.image.layer.v1.tar", noise)],
        &[sha256_digest(b"x")],
    );
    let r = k.resolve(&Limits::default());
    k.refused(r, "not a valid tar archive");

    raw_layout(
        &k,
        &[("application/vnd.oci.image.layer.v1.tar+zstd", vec![1])],
        &[sha256_digest(b"x")],
    );
    let r = k.resolve(&Limits::default());
    k.refused(r, "zstd");
}

#[test]
fn the_platform_is_chosen_not_the_first_entry() {
    let k = Case::new("platform");
    let w = LayoutWriter::create(&k.layout()).unwrap();
    let arm = tar(&[("arch", Kind::File(b"arm64"))]);
    let amd = tar(&[("arch", Kind::File(b"amd64"))]);
    let mut arm_m = write::image(&w, &[arm], &ImageSpec::default()).unwrap();
    arm_m["platform"] = json!({"os": "linux", "architecture": "arm64"});
    let mut amd_m = write::image(&w, &[amd], &ImageSpec::default()).unwrap();
    amd_m["platform"] = json!({"os": "linux", "architecture": "amd64"});
    w.index(vec![arm_m.clone(), amd_m]).unwrap();
    let img = k.resolve(&Limits::default()).unwrap();
    assert_eq!(fs::read(img.rootfs.join("arch")).unwrap(), b"amd64");
    w.index(vec![arm_m]).unwrap();
    let r = k.resolve(&Limits::default());
    k.refused(
        r,
        "no linux/amd64 image in the index (it offers linux/arm64)",
    );
}

/// A tar of a layout: only its index, oci-layout and digest-named blobs are taken; links,
/// `..` names and blobs that do not match their names never reach the disk.
#[test]
fn an_image_tar_is_read_without_unpacking_it() {
    let k = Case::new("archive");
    write::write_layout(
        &k.layout(),
        &[tar(&[("hello", Kind::File(b"hi"))])],
        &ImageSpec::default(),
        "x",
    )
    .unwrap();
    let mut entries: Vec<(String, Vec<u8>)> = vec![
        (
            "index.json".into(),
            fs::read(k.layout().join("index.json")).unwrap(),
        ),
        (
            "oci-layout".into(),
            fs::read(k.layout().join("oci-layout")).unwrap(),
        ),
    ];
    for e in fs::read_dir(k.layout().join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let name = format!("blobs/sha256/{}", e.file_name().to_string_lossy());
        entries.push((name, fs::read(e.path()).unwrap()));
    }
    let up = format!("../../../../../../../..{}", k.c("/precious"));
    let hostile_link = format!("blobs/sha256/{}", "0".repeat(64));
    let build = |extra: Option<(String, Vec<u8>)>| {
        let mut t: Vec<(String, Kind)> = Vec::new();
        let owned: Vec<(String, Vec<u8>)> = entries.iter().cloned().chain(extra).collect();
        for (n, d) in &owned {
            t.push((n.clone(), Kind::File(d)));
        }
        let mut all: Vec<(&str, Kind)> = t
            .iter()
            .map(|(n, k)| {
                (
                    n.as_str(),
                    match k {
                        Kind::File(d) => Kind::File(d),
                        _ => unreachable!(),
                    },
                )
            })
            .collect();
        let target = k.c("/precious");
        all.push((&up, Kind::File(b"pwned")));
        all.push((&hostile_link, Kind::Symlink(&target)));
        all.push(("blobs", Kind::Symlink("/")));
        tar(&all)
    };
    let archive = k.dir.join("image.tar");
    fs::write(&archive, build(None)).unwrap();
    let img = resolve_with(archive.to_str().unwrap(), &k.cache(), &Limits::default()).unwrap();
    assert_eq!(fs::read(img.rootfs.join("hello")).unwrap(), b"hi");
    k.untouched();
    let forged = (
        format!("blobs/sha256/{}", "1".repeat(64)),
        b"forged".to_vec(),
    );
    fs::write(&archive, build(Some(forged))).unwrap();
    let e = resolve_with(archive.to_str().unwrap(), &k.cache(), &Limits::default()).unwrap_err();
    let e = e.to_string();
    assert!(e.contains("in the tar does not match its digest"), "{e}");
    assert!(!e.contains('\n'));
    k.untouched();
    // Only the first, verified tar's layout is cached.
    assert_eq!(fs::read_dir(k.cache().join("layouts")).unwrap().count(), 1);
}
