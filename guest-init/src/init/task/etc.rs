//! The files a container expects of its sandbox, as docker provides them: `/etc/hostname`,
//! `/etc/hosts` and `/etc/resolv.conf`, written into the bundle and bind-mounted over the
//! image's own (an image's copies describe the machine it was built on).

use std::path::Path;

use oci_spec::runtime::{Mount, MountBuilder};

use super::TaskError;
use crate::init::net::Identity;

/// Where each file goes in the container.
const FILES: &[&str] = &["hostname", "hosts", "resolv.conf"];

/// Writes the files under `<bundle>/etc/` and returns the bind mounts for those the spec does
/// not mount itself.
pub fn prepare(
    bundle: &Path,
    hostname: &str,
    identity: &Identity,
    spec_mounts: &[Mount],
) -> Result<Vec<Mount>, TaskError> {
    let dir = bundle.join("etc");
    std::fs::create_dir_all(&dir)
        .map_err(|e| TaskError::Internal(format!("{}: {e}", dir.display())))?;
    let contents = [
        format!("{hostname}\n"),
        hosts(hostname, identity),
        // Without a network: no resolver, as docker's --network none.
        identity.resolv_conf(),
    ];
    let mut mounts = Vec::new();
    for (name, text) in FILES.iter().zip(contents) {
        let src = dir.join(name);
        std::fs::write(&src, text)
            .map_err(|e| TaskError::Internal(format!("{}: {e}", src.display())))?;
        let dest = Path::new("/etc").join(name);
        if spec_mounts.iter().any(|m| m.destination() == &dest) {
            continue;
        }
        let m = MountBuilder::default()
            .destination(dest)
            .typ("bind")
            .source(src)
            .options(vec!["rbind".to_string(), "rprivate".to_string()])
            .build()
            .map_err(|e| TaskError::Internal(format!("mount for /etc/{name}: {e}")))?;
        mounts.push(m);
    }
    Ok(mounts)
}

/// docker's /etc/hosts: the hostname resolves to the sandbox's addresses, or to 127.0.1.1
/// (as on Debian) without any.
fn hosts(hostname: &str, identity: &Identity) -> String {
    let mut s =
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
            .to_string();
    if identity.addresses.is_empty() {
        s.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    for a in &identity.addresses {
        s.push_str(&format!("{a}\t{hostname}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_and_mounted_unless_the_spec_mounts_them() {
        let dir = std::env::temp_dir().join(format!("box-etc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let own = MountBuilder::default()
            .destination("/etc/resolv.conf")
            .typ("bind")
            .source("/somewhere")
            .build()
            .unwrap();
        let m = prepare(&dir, "web", &Identity::default(), &[own]).unwrap();
        let dests: Vec<_> = m.iter().map(|m| m.destination().clone()).collect();
        assert_eq!(
            dests,
            vec![Path::new("/etc/hostname"), Path::new("/etc/hosts")]
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("etc/hostname")).unwrap(),
            "web\n"
        );
        let hosts = std::fs::read_to_string(dir.join("etc/hosts")).unwrap();
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"), "{hosts}");
        assert!(hosts.ends_with("127.0.1.1\tweb\n"), "{hosts}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_networked_sandbox_names_its_address_and_resolvers() {
        let dir = std::env::temp_dir().join(format!("box-etc-net-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let id = Identity {
            addresses: vec!["10.89.0.2".parse().unwrap()],
            nameservers: vec!["10.89.0.1".parse().unwrap()],
            ..Identity::default()
        };
        prepare(&dir, "web", &id, &[]).unwrap();
        let hosts = std::fs::read_to_string(dir.join("etc/hosts")).unwrap();
        assert!(
            hosts.ends_with("ip6-allrouters\n10.89.0.2\tweb\n"),
            "{hosts}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("etc/resolv.conf")).unwrap(),
            "nameserver 10.89.0.1\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
