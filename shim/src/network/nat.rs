//! NAT for the `nat` network, in nftables: one table (`ip box`) that is Box's alone, so
//! nothing else's rules are touched and its base chains can be rewritten whole on every
//! start (idempotent). Published ports are elements of maps, not rules: adding or deleting
//! one is a single element, named by the claim file that records it.
//!
//! Through the `nft` program, as docker and podman (netavark) drive theirs: the kernel's
//! nftables netlink API has no well-kept Rust crate, and `nft -f` applies a script as one
//! transaction.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{NatNetwork, NetworkError, PortMapping, Proto};

const TABLE: &str = "ip box";

fn nft_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BOX_NFT").filter(|p| !p.is_empty()) {
        return Some(p.into());
    }
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&dirs)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
}

/// The host can do NAT: `nft` is there and so is the TUN device.
pub fn preflight() -> Result<(), NetworkError> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(NetworkError::Missing(
            "/dev/net/tun is missing: load the tun module (modprobe tun), or run with --network none"
                .into(),
        ));
    }
    if nft_path().is_none() {
        return Err(NetworkError::Missing(
            "nft is missing (Debian package nftables): install it, or run with --network none"
                .into(),
        ));
    }
    Ok(())
}

/// Runs one nft script as a transaction.
fn nft(script: &str) -> Result<(), NetworkError> {
    let path = nft_path()
        .ok_or_else(|| NetworkError::Missing("nft is missing (package nftables)".into()))?;
    let mut child = Command::new(&path)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetworkError::Nft(format!("cannot run {}: {e}", path.display())))?;
    let wrote = child
        .stdin
        .take()
        .map(|mut i| i.write_all(script.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| NetworkError::Nft(e.to_string()))?;
    if let Some(Err(e)) = wrote {
        return Err(NetworkError::Nft(format!("writing the script: {e}")));
    }
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(NetworkError::Nft(
            err.lines().next().unwrap_or("failed").trim().to_string(),
        ));
    }
    Ok(())
}

/// The table's script: maps, base chains (flushed and rewritten), forwarding.
pub fn ruleset(net: &NatNetwork) -> String {
    let br = &net.bridge;
    let subnet = &net.subnet;
    format!(
        "add table {TABLE}
add map {TABLE} tcp_any {{ type inet_service : ipv4_addr . inet_service ; }}
add map {TABLE} udp_any {{ type inet_service : ipv4_addr . inet_service ; }}
add map {TABLE} tcp_at {{ type ipv4_addr . inet_service : ipv4_addr . inet_service ; }}
add map {TABLE} udp_at {{ type ipv4_addr . inet_service : ipv4_addr . inet_service ; }}
add chain {TABLE} published
add chain {TABLE} prerouting {{ type nat hook prerouting priority dstnat ; }}
add chain {TABLE} output {{ type nat hook output priority -100 ; }}
add chain {TABLE} postrouting {{ type nat hook postrouting priority srcnat ; }}
add chain {TABLE} forward {{ type filter hook forward priority filter ; }}
flush chain {TABLE} published
flush chain {TABLE} prerouting
flush chain {TABLE} output
flush chain {TABLE} postrouting
flush chain {TABLE} forward
add rule {TABLE} published meta l4proto tcp dnat ip to ip daddr . tcp dport map @tcp_at
add rule {TABLE} published meta l4proto udp dnat ip to ip daddr . udp dport map @udp_at
add rule {TABLE} published meta l4proto tcp dnat ip to tcp dport map @tcp_any
add rule {TABLE} published meta l4proto udp dnat ip to udp dport map @udp_any
add rule {TABLE} prerouting fib daddr type local jump published
add rule {TABLE} output fib daddr type local jump published
add rule {TABLE} postrouting ip saddr {subnet} oifname != \"{br}\" masquerade
add rule {TABLE} postrouting ip saddr 127.0.0.0/8 oifname \"{br}\" masquerade
add rule {TABLE} forward iifname \"{br}\" accept
add rule {TABLE} forward oifname \"{br}\" ct state established,related accept
add rule {TABLE} forward oifname \"{br}\" ct status dnat accept
"
    )
}

/// Sets up (or refreshes) the table, and the sysctls NAT needs: forwarding, and
/// `route_localnet` on the bridge so that a port published on 127.0.0.1 reaches a guest.
pub fn ensure_rules(net: &NatNetwork) -> Result<(), NetworkError> {
    for (path, what) in [
        ("/proc/sys/net/ipv4/ip_forward".to_string(), "IP forwarding"),
        (
            format!("/proc/sys/net/ipv4/conf/{}/route_localnet", net.bridge),
            "route_localnet",
        ),
    ] {
        std::fs::write(&path, "1").map_err(super::io_err(format!("turning on {what} ({path})")))?;
    }
    nft(&ruleset(net))
}

fn element(m: &PortMapping, guest: Ipv4Addr) -> (String, String, String) {
    let proto = match m.proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    match m.host_ip {
        None => (
            format!("{proto}_any"),
            m.host_port.to_string(),
            format!("{guest} . {}", m.guest_port),
        ),
        Some(ip) => (
            format!("{proto}_at"),
            format!("{ip} . {}", m.host_port),
            format!("{guest} . {}", m.guest_port),
        ),
    }
}

pub fn add_port(m: &PortMapping, guest: Ipv4Addr) -> Result<(), NetworkError> {
    let (map, key, value) = element(m, guest);
    nft(&format!(
        "add element {TABLE} {map} {{ {key} : {value} }}\n"
    ))
    .map_err(|e| NetworkError::Nft(format!("publishing {m}: {e}")))
}

/// Deletes the element if it is there (nft 1.0.6 has no `destroy`: a missing one is fine).
pub fn delete_port(m: &PortMapping, guest: Ipv4Addr) -> Result<(), NetworkError> {
    let (map, key, _) = element(m, guest);
    match nft(&format!("delete element {TABLE} {map} {{ {key} }}\n")) {
        Ok(()) => Ok(()),
        Err(NetworkError::Nft(e)) if e.contains("No such file") || e.contains("does not exist") => {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_key_on_the_port_or_the_address_and_port() {
        let any: PortMapping = "8080:80".parse().unwrap();
        let g: Ipv4Addr = "10.77.0.2".parse().unwrap();
        assert_eq!(
            element(&any, g),
            ("tcp_any".into(), "8080".into(), "10.77.0.2 . 80".into())
        );
        let at: PortMapping = "127.0.0.1:53:53/udp".parse().unwrap();
        assert_eq!(
            element(&at, g),
            (
                "udp_at".into(),
                "127.0.0.1 . 53".into(),
                "10.77.0.2 . 53".into()
            )
        );
    }

    #[test]
    fn the_ruleset_masquerades_only_the_subnet_leaving_the_bridge() {
        let n = NatNetwork {
            bridge: "box0".into(),
            subnet: "10.77.0.0/24".parse().unwrap(),
            gateway: "10.77.0.1".parse().unwrap(),
        };
        let r = ruleset(&n);
        assert!(
            r.contains("ip saddr 10.77.0.0/24 oifname != \"box0\" masquerade"),
            "{r}"
        );
        assert!(r.contains("flush chain ip box prerouting"), "{r}");
    }
}
