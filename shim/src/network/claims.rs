//! What sandboxes hold of the host's network, written down under the state root before it is
//! made, so that it is released by name after a crash (`box rm` of a sandbox whose record is
//! gone included):
//! - `network/leases/<ip>`: the address a sandbox holds, until `rm`; the file holds its name;
//! - `network/ports/<proto>-<port>`: a published port, until stop or `rm`; the file holds the
//!   owner and the mapping, so the nftables element can be deleted from it alone.
//!
//! Every change happens under one `flock` on `network/lock`: claims are few and quick, and one
//! lock makes a stale claim's takeover race-free.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{io_err, nat, NatNetwork, NetworkError, PortMapping, Proto};
use crate::sandbox::state::StateRoot;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PortClaim {
    owner: String,
    mapping: PortMapping,
    guest: Ipv4Addr,
}

pub struct Claims {
    dir: PathBuf,
}

struct Locked(#[allow(dead_code)] File);

impl Claims {
    pub fn new(root: &StateRoot) -> Claims {
        Claims {
            dir: super::dir(root.root()),
        }
    }

    fn lock(&self) -> Result<Locked, NetworkError> {
        for d in ["leases", "ports"] {
            let p = self.dir.join(d);
            std::fs::create_dir_all(&p).map_err(io_err(format!("creating {}", p.display())))?;
        }
        let path = self.dir.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        // SAFETY: flock on a descriptor we own; the lock goes with the file.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(format!("locking {}", path.display()))(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Locked(f))
    }

    /// The entries of `network/<kind>/` with their contents.
    fn entries(&self, kind: &str) -> Result<Vec<(PathBuf, String)>, NetworkError> {
        let d = self.dir.join(kind);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&d).map_err(io_err(format!("listing {}", d.display())))? {
            let p = e
                .map_err(io_err(format!("listing {}", d.display())))?
                .path();
            if let Ok(text) = std::fs::read_to_string(&p) {
                out.push((p, text));
            }
        }
        Ok(out)
    }

    fn write(path: &PathBuf, text: &str) -> Result<(), NetworkError> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(io_err(format!("writing {}", path.display())))
    }

    /// Leases an address of `net` to `owner` (the one it holds already, if any). A lease
    /// whose owner no longer exists (`exists` says no) is taken over.
    pub fn lease(
        &self,
        net: &NatNetwork,
        owner: &str,
        exists: &dyn Fn(&str) -> bool,
    ) -> Result<Ipv4Addr, NetworkError> {
        let _l = self.lock()?;
        let held = self.entries("leases")?;
        let ip_of = |p: &PathBuf| p.file_name()?.to_str()?.parse::<Ipv4Addr>().ok();
        if let Some(ip) = held
            .iter()
            .find(|(_, o)| o == owner)
            .and_then(|(p, _)| ip_of(p))
        {
            return Ok(ip);
        }
        for ip in net.hosts() {
            let path = self.dir.join("leases").join(ip.to_string());
            match held.iter().find(|(p, _)| p == &path) {
                Some((_, o)) if exists(o) => continue,
                _ => {
                    Self::write(&path, owner)?;
                    return Ok(ip);
                }
            }
        }
        Err(NetworkError::Conflict(format!(
            "no free address left in {} ({} sandboxes hold one): remove some with box rm",
            net.subnet,
            held.len()
        )))
    }

    /// Releases every lease `owner` holds.
    pub fn release_leases(&self, owner: &str) -> Result<(), NetworkError> {
        let _l = self.lock()?;
        for (p, o) in self.entries("leases")? {
            if o == owner {
                std::fs::remove_file(&p).map_err(io_err(format!("removing {}", p.display())))?;
            }
        }
        Ok(())
    }

    fn port_path(&self, m: &PortMapping) -> PathBuf {
        // One claim per protocol and port, whatever the host address: a port published on
        // every address and on one of them at once would shadow each other.
        self.dir
            .join("ports")
            .join(format!("{}-{}", m.proto, m.host_port))
    }

    /// Publishes `m` to `guest` for `owner`: claims it (taking over a claim whose owner no
    /// longer runs), checks that no host process listens there, and adds the DNAT element.
    pub fn publish(
        &self,
        m: &PortMapping,
        guest: Ipv4Addr,
        owner: &str,
        is_live: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<(), NetworkError> {
        let _l = self.lock()?;
        let path = self.port_path(m);
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(old) = serde_json::from_str::<PortClaim>(&text) {
                if old.owner != owner && is_live(&old.owner) {
                    return Err(NetworkError::Conflict(format!(
                        "port {}/{} is already published by sandbox {}",
                        m.host_port, m.proto, old.owner
                    )));
                }
                // Stale (its sandbox stopped or crashed) or ours: its element goes first.
                nat::delete_port(&old.mapping, old.guest)?;
            }
        }
        check_port_free(m)?;
        let claim = PortClaim {
            owner: owner.into(),
            mapping: *m,
            guest,
        };
        Self::write(
            &path,
            &serde_json::to_string(&claim).expect("a claim serializes"),
        )?;
        if let Err(e) = nat::add_port(m, guest) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(())
    }

    /// Unpublishes every port `owner` holds.
    pub fn unpublish_all(&self, owner: &str) -> Result<(), NetworkError> {
        let _l = self.lock()?;
        for (p, text) in self.entries("ports")? {
            let Ok(c) = serde_json::from_str::<PortClaim>(&text) else {
                continue;
            };
            if c.owner == owner {
                nat::delete_port(&c.mapping, c.guest)?;
                std::fs::remove_file(&p).map_err(io_err(format!("removing {}", p.display())))?;
            }
        }
        Ok(())
    }
}

/// A host process listening on the port would never see its traffic once DNAT takes it:
/// refuse, as docker does.
fn check_port_free(m: &PortMapping) -> Result<(), NetworkError> {
    let ip = m.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let r = match m.proto {
        Proto::Tcp => std::net::TcpListener::bind((ip, m.host_port)).map(drop),
        Proto::Udp => std::net::UdpSocket::bind((ip, m.host_port)).map(drop),
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            Err(NetworkError::Conflict(format!(
                "port {}/{} is in use on this host ({ip}:{} has a listener)",
                m.host_port, m.proto, m.host_port
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => Err(NetworkError::Invalid(
            format!("-p {m}: {ip} is not an address of this host"),
        )),
        Err(e) => Err(io_err(format!("checking port {}/{}", m.host_port, m.proto))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> NatNetwork {
        NatNetwork {
            bridge: "box0".into(),
            subnet: "10.77.0.0/29".parse().unwrap(),
            gateway: "10.77.0.1".parse().unwrap(),
        }
    }

    fn root(tag: &str) -> StateRoot {
        let d = std::env::temp_dir().join(format!("box-claims-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        StateRoot::new(d)
    }

    #[test]
    fn leases_are_unique_kept_per_owner_and_released() {
        let r = root("lease");
        let c = Claims::new(&r);
        let all = |_: &str| true;
        let a = c.lease(&net(), "a", &all).unwrap();
        let b = c.lease(&net(), "b", &all).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            c.lease(&net(), "a", &all).unwrap(),
            a,
            "one owner, one lease"
        );
        c.release_leases("a").unwrap();
        assert_eq!(
            c.lease(&net(), "c", &all).unwrap(),
            a,
            "a released address is reused"
        );
        let _ = std::fs::remove_dir_all(r.root());
    }

    #[test]
    fn a_full_subnet_is_a_clear_error_and_stale_leases_are_taken_over() {
        let r = root("full");
        let c = Claims::new(&r);
        let all = |_: &str| true;
        for i in 0..5 {
            c.lease(&net(), &format!("s{i}"), &all).unwrap();
        }
        let e = c.lease(&net(), "late", &all).unwrap_err().to_string();
        assert!(e.contains("no free address left in 10.77.0.0/29"), "{e}");
        // s0's sandbox is gone (a crash and its directory removed by hand): its address is free.
        let ip = c.lease(&net(), "late", &|o: &str| o != "s0").unwrap();
        assert_eq!(ip.to_string(), "10.77.0.2");
        let _ = std::fs::remove_dir_all(r.root());
    }

    #[test]
    fn a_port_a_host_process_listens_on_is_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let m: PortMapping = format!("127.0.0.1:{port}:80").parse().unwrap();
        let e = check_port_free(&m).unwrap_err().to_string();
        assert!(e.contains("in use on this host"), "{e}");
        drop(l);
        assert!(check_port_free(&m).is_ok());
    }
}
