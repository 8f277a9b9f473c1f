//! The user a container process runs as: the image's `User` (or `-u`), resolved as docker
//! does against the container's own `/etc/passwd` and `/etc/group`, read inside its root
//! filesystem (a symlinked `/etc/passwd` resolves in the container, never on the host).

use std::path::Path;

use box_images::unpack::root::{RelPath, Root};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// The passwd entry's home, for `HOME` when the image sets none.
    #[serde(default)]
    pub home: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user {0:?}: no such user in the container's /etc/passwd")]
    NoUser(String),
    #[error("user {0:?}: no such group in the container's /etc/group")]
    NoGroup(String),
    #[error("user {0:?}: ids must be below 2^32-1")]
    Range(String),
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct Group {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn read(rootfs: &Path, file: &str) -> String {
    let Ok(root) = Root::open(rootfs) else {
        return String::new();
    };
    root.read_file(&RelPath::clean(Path::new(file)), 4 << 20)
        .map(|d| String::from_utf8_lossy(&d).into_owned())
        .unwrap_or_default()
}

fn passwd(text: &str) -> Vec<Passwd> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(Passwd {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).unwrap_or(&"/").to_string(),
            })
        })
        .collect()
}

fn groups(text: &str) -> Vec<Group> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(Group {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn id(s: &str, whole: &str) -> Result<Option<u32>, UserError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match s.parse::<u32>() {
        Ok(v) if v != u32::MAX => Ok(Some(v)),
        _ => Err(UserError::Range(whole.into())),
    }
}

/// `user` as docker takes it: `""` (root), `name`, `uid`, `name:group`, `uid:gid`, ... A
/// numeric uid need not exist in passwd (its gid is then 0, its home `/`).
pub fn resolve(rootfs: &Path, user: &str) -> Result<UserIds, UserError> {
    resolve_in(
        &read(rootfs, "/etc/passwd"),
        &read(rootfs, "/etc/group"),
        user,
    )
}

fn resolve_in(passwd_text: &str, group_text: &str, user: &str) -> Result<UserIds, UserError> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let users = passwd(passwd_text);
    let groups = groups(group_text);
    let entry = match (u, id(u, user)?) {
        ("", _) => users.iter().find(|p| p.uid == 0),
        (_, Some(uid)) => users.iter().find(|p| p.uid == uid),
        (name, None) => Some(
            users
                .iter()
                .find(|p| p.name == name)
                .ok_or_else(|| UserError::NoUser(user.into()))?,
        ),
    };
    let uid = match (u, id(u, user)?) {
        ("", _) => 0,
        (_, Some(uid)) => uid,
        _ => entry.map_or(0, |p| p.uid),
    };
    let gid = match g {
        None => entry.map_or(0, |p| p.gid),
        Some(g) => match id(g, user)? {
            Some(gid) => gid,
            None => groups
                .iter()
                .find(|gr| gr.name == g)
                .map(|gr| gr.gid)
                .ok_or_else(|| UserError::NoGroup(user.into()))?,
        },
    };
    // Supplementary groups from /etc/group, as docker adds them (only with no explicit group).
    let additional_gids = match (g, entry) {
        (None, Some(p)) => groups
            .iter()
            .filter(|gr| gr.members.contains(&p.name) && gr.gid != gid)
            .map(|gr| gr.gid)
            .collect(),
        _ => Vec::new(),
    };
    Ok(UserIds {
        uid,
        gid,
        additional_gids,
        home: entry.map(|p| p.home.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\nbob:x:1000:1000::/home/bob:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\nbob:x:1000:\nstaff:x:50:bob,alice\n";

    #[test]
    fn users_resolve_as_docker_resolves_them() {
        let r = |u| resolve_in(PASSWD, GROUP, u);
        assert_eq!(r("").unwrap().uid, 0);
        let bob = r("bob").unwrap();
        assert_eq!(
            (bob.uid, bob.gid, bob.additional_gids.clone()),
            (1000, 1000, vec![50])
        );
        assert_eq!(bob.home.as_deref(), Some("/home/bob"));
        assert_eq!(r("33").unwrap().gid, 33);
        let anon = r("4242").unwrap();
        assert_eq!((anon.uid, anon.gid, anon.home), (4242, 0, None));
        assert_eq!(r("bob:staff").unwrap().gid, 50);
        assert_eq!(r("bob:7").unwrap().gid, 7);
        assert_eq!(r("1000:www").unwrap().gid, 33);
        assert_eq!(r("nobody"), Err(UserError::NoUser("nobody".into())));
        assert_eq!(
            r("bob:nogroup"),
            Err(UserError::NoGroup("bob:nogroup".into()))
        );
        assert_eq!(r("4294967295"), Err(UserError::Range("4294967295".into())));
    }
}
