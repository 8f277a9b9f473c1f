//! Sandbox networks, on the host side. A sandbox gets one of:
//! - `nat` (the default for `box`, docker's bridge model): a TAP on the `box0` bridge, an
//!   address from [`ipam`], egress masqueraded and `-p` ports published by [`nat`] (nftables);
//! - `none`: no interface but `lo`;
//! - `ns:PATH` (the pod path the containerd shim uses): a TAP inside a network namespace CNI
//!   made, joined to its veth by tc redirects ([`pod`], Kata's model); the guest takes the
//!   veth's MAC, addresses and routes.
//!
//! The host library opens the TAP and hands its fd to box-vmm, so a jailed VMM needs no
//! privilege. The TAP is not persistent: it goes when box-vmm's fd closes, crash or not.
//! Everything else a sandbox holds (its lease, its published ports) is written down under the
//! state root before it is made, so `box rm` releases it even after a crash.

pub mod claims;
pub mod link;
pub mod nat;
pub mod pod;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use box_guest_init::api::agent::{ConfigureNetworkRequest, Interface, Route};
use box_guest_init::api::net::{Cidr, Mac};
use serde::{Deserialize, Serialize};

use crate::sandbox::state::StateRoot;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{0}")]
    Invalid(String),
    /// A host tool or device is missing; the message says what to install.
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tap(#[from] box_vmm::devices::virtio::net::tap::TapError),
    #[error("nft: {0}")]
    Nft(String),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Io { what, source }
}

/// `--network`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkMode {
    #[default]
    Nat,
    None,
    /// A network namespace made by someone else (CNI).
    Netns(PathBuf),
}

impl FromStr for NetworkMode {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<NetworkMode, NetworkError> {
        match s {
            "nat" | "bridge" | "" => Ok(NetworkMode::Nat),
            "none" => Ok(NetworkMode::None),
            s if s.starts_with("ns:") && s.len() > 3 => Ok(NetworkMode::Netns(s[3..].into())),
            s => Err(NetworkError::Invalid(format!(
                "--network {s:?}: use nat (default), none, or ns:PATH (a network namespace)"
            ))),
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetworkMode::Nat => f.write_str("nat"),
            NetworkMode::None => f.write_str("none"),
            NetworkMode::Netns(p) => write!(f, "ns:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// `-p [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// None: every local address.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub guest_port: u16,
    pub proto: Proto,
}

impl FromStr for PortMapping {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<PortMapping, NetworkError> {
        let bad = |why: &str| {
            NetworkError::Invalid(format!(
                "-p {s:?}: {why} (expected [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp])"
            ))
        };
        let (ports, proto) = match s.rsplit_once('/') {
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some(_) => return Err(bad("the protocol must be tcp or udp")),
            None => (s, Proto::Tcp),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (ip, host, guest) = match parts[..] {
            [h, g] => (None, h, g),
            [ip, h, g] => (Some(ip), h, g),
            _ => return Err(bad("wrong number of ':'")),
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
        let host_ip = match ip {
            None | Some("") => None,
            Some(ip) => Some(
                ip.parse::<Ipv4Addr>()
                    .map_err(|_| bad("HOSTIP must be an IPv4 address"))?,
            ),
        };
        Ok(PortMapping {
            host_ip: host_ip.filter(|ip| !ip.is_unspecified()),
            host_port: port(host).ok_or_else(|| bad("HOSTPORT must be 1-65535"))?,
            guest_port: port(guest).ok_or_else(|| bad("GUESTPORT must be 1-65535"))?,
            proto,
        })
    }
}

impl fmt::Display for PortMapping {
    /// docker's form: `0.0.0.0:8080->80/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        write!(
            f,
            "{ip}:{}->{}/{}",
            self.host_port, self.guest_port, self.proto
        )
    }
}

/// The guest's interface as the host planned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInterface {
    pub mac: String,
    pub addresses: Vec<String>,
    pub mtu: u32,
    /// (destination, gateway): "default" for the default route.
    pub routes: Vec<(String, String)>,
}

/// What a sandbox's network is, in its record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub mode: NetworkMode,
    /// The TAP box-vmm serves the guest's NIC from.
    #[serde(default)]
    pub tap: Option<String>,
    #[serde(default)]
    pub interface: Option<GuestInterface>,
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
}

impl Attachment {
    /// The sandbox's first address, without its prefix.
    pub fn ip(&self) -> Option<String> {
        let a = self.interface.as_ref()?.addresses.first()?;
        Some(a.split('/').next().unwrap_or(a).to_string())
    }

    /// The guest-init call that configures this network.
    pub fn guest_request(&self) -> ConfigureNetworkRequest {
        let mut req = ConfigureNetworkRequest {
            dns_servers: self.dns.clone(),
            ..Default::default()
        };
        if let Some(i) = &self.interface {
            req.interfaces.push(Interface {
                mac: i.mac.clone(),
                name: "eth0".into(),
                addresses: i.addresses.clone(),
                mtu: i.mtu,
                ..Default::default()
            });
            for (dest, gw) in &i.routes {
                req.routes.push(Route {
                    destination: dest.clone(),
                    gateway: gw.clone(),
                    interface_mac: i.mac.clone(),
                    ..Default::default()
                });
            }
        }
        req
    }
}

/// A sandbox's network being made: the record's part and the TAP for box-vmm.
pub struct Attached {
    pub attachment: Attachment,
    pub tap: Option<OwnedFd>,
}

/// The `nat` network's settings: the bridge and its subnet (`$BOX_NET_SUBNET`, default
/// 10.77.0.0/24, a range docker, podman and CNI's examples leave alone).
#[derive(Debug, Clone)]
pub struct NatNetwork {
    pub bridge: String,
    pub subnet: Cidr,
    pub gateway: Ipv4Addr,
}

pub const BRIDGE: &str = "box0";
pub const DEFAULT_SUBNET: &str = "10.77.0.0/24";

impl NatNetwork {
    pub fn from_env() -> Result<NatNetwork, NetworkError> {
        let s = std::env::var("BOX_NET_SUBNET")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SUBNET.into());
        let subnet: Cidr = s
            .parse()
            .map_err(|e| NetworkError::Invalid(format!("BOX_NET_SUBNET: {e}")))?;
        let IpAddr::V4(net) = subnet.network() else {
            return Err(NetworkError::Invalid(format!(
                "BOX_NET_SUBNET {s}: must be IPv4"
            )));
        };
        if !(16..=29).contains(&subnet.prefix) {
            return Err(NetworkError::Invalid(format!(
                "BOX_NET_SUBNET {s}: the prefix must be between /16 and /29"
            )));
        }
        let subnet = Cidr {
            addr: IpAddr::V4(net),
            prefix: subnet.prefix,
        };
        Ok(NatNetwork {
            bridge: BRIDGE.into(),
            subnet,
            gateway: Ipv4Addr::from(u32::from(net) + 1),
        })
    }

    /// The addresses sandboxes may take: all but the network, the gateway and broadcast.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let IpAddr::V4(net) = self.subnet.network() else {
            unreachable!("checked IPv4 in from_env")
        };
        let first = u32::from(net) + 2;
        let last = u32::from(net) + (1u32 << (32 - u32::from(self.subnet.prefix))) - 2;
        (first..=last).map(Ipv4Addr::from)
    }
}

/// A locally administered MAC derived from the sandbox's address (unique while its lease is).
pub fn mac_for(ip: Ipv4Addr) -> Mac {
    let o = ip.octets();
    Mac([0x02, 0xb0, 0xc5, o[1], o[2], o[3]])
}

/// The TAP's name: `bx` and the first 12 hex digits of the sandbox id (IFNAMSIZ is 16).
pub fn tap_name(id: &str) -> String {
    format!("bx{}", &id[..id.len().min(12)])
}

/// The nameservers a NAT sandbox gets: the host's, less loopback ones (unreachable from a
/// guest), else docker's fallback.
pub fn host_nameservers(resolv_conf: &str) -> Vec<String> {
    let servers: Vec<String> = resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_loopback() && ip.is_ipv4())
        .map(|ip| ip.to_string())
        .collect();
    if servers.is_empty() {
        vec!["8.8.8.8".into(), "8.8.4.4".into()]
    } else {
        servers
    }
}

/// Makes the sandbox's network: for `nat`, the bridge and NAT rules (idempotently), a lease,
/// the published ports, and the TAP on the bridge; for `ns:PATH`, the TAP wired to the veth.
/// `is_live` tells whether a sandbox that holds a port still runs (else its claim is stale).
/// On error, what this call made is released again.
pub async fn attach(
    root: &StateRoot,
    name: &str,
    id: &str,
    mode: &NetworkMode,
    ports: &[PortMapping],
    is_live: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Attached, NetworkError> {
    match mode {
        NetworkMode::None => {
            if !ports.is_empty() {
                return Err(NetworkError::Invalid(
                    "-p needs a network: --network none publishes nothing".into(),
                ));
            }
            Ok(Attached {
                attachment: Attachment {
                    mode: NetworkMode::None,
                    ..Default::default()
                },
                tap: None,
            })
        }
        NetworkMode::Netns(path) => {
            if !ports.is_empty() {
                return Err(NetworkError::Invalid(
                    "-p does not apply to ns:PATH: the namespace's owner (CNI) publishes ports"
                        .into(),
                ));
            }
            pod::attach(path, &tap_name(id)).await
        }
        NetworkMode::Nat => {
            let net = NatNetwork::from_env()?;
            let r = attach_nat(root, &net, name, id, ports, is_live).await;
            if r.is_err() {
                release(root, name);
            }
            r
        }
    }
}

async fn attach_nat(
    root: &StateRoot,
    net: &NatNetwork,
    name: &str,
    id: &str,
    ports: &[PortMapping],
    is_live: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Attached, NetworkError> {
    nat::preflight()?;
    link::ensure_bridge(net).await?;
    nat::ensure_rules(net)?;
    let claims = claims::Claims::new(root);
    let ip = claims.lease(net, name, &|owner| root.dir(owner).is_dir())?;
    for p in ports {
        claims.publish(p, ip, name, is_live)?;
    }
    let tap = tap_name(id);
    let fd = box_vmm::devices::virtio::net::tap::open(&tap)?;
    link::join_bridge(&tap, &net.bridge).await?;
    let mac = mac_for(ip);
    let attachment = Attachment {
        mode: NetworkMode::Nat,
        tap: Some(tap),
        interface: Some(GuestInterface {
            mac: mac.to_string(),
            addresses: vec![format!("{ip}/{}", net.subnet.prefix)],
            mtu: 1500,
            routes: vec![("default".into(), net.gateway.to_string())],
        }),
        dns: host_nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()),
        ports: ports.to_vec(),
    };
    Ok(Attached {
        attachment,
        tap: Some(fd),
    })
}

/// Unpublishes the sandbox's ports (stop): its address stays leased until `rm`.
pub fn unpublish(root: &StateRoot, name: &str) {
    if let Err(e) = claims::Claims::new(root).unpublish_all(name) {
        tracing::warn!("{name}: unpublishing its ports: {e}");
    }
}

/// Releases everything of the sandbox's network that the state root names: its ports and
/// its lease (`rm`, also of a sandbox whose record is gone). Its TAP went with its box-vmm.
pub fn release(root: &StateRoot, name: &str) {
    let c = claims::Claims::new(root);
    if let Err(e) = c.unpublish_all(name).and_then(|()| c.release_leases(name)) {
        tracing::warn!("{name}: releasing its network: {e}");
    }
}

/// The state root's network directory.
pub fn dir(root: &Path) -> PathBuf {
    root.join("network")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings_parse_like_docker_and_bad_ones_say_why() {
        let p: PortMapping = "8080:80".parse().unwrap();
        assert_eq!(
            p,
            PortMapping {
                host_ip: None,
                host_port: 8080,
                guest_port: 80,
                proto: Proto::Tcp
            }
        );
        assert_eq!(p.to_string(), "0.0.0.0:8080->80/tcp");
        let p: PortMapping = "127.0.0.1:53:5353/udp".parse().unwrap();
        assert_eq!(p.host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(p.to_string(), "127.0.0.1:53->5353/udp");
        for (bad, why) in [
            ("80", "':'"),
            ("0:80", "HOSTPORT"),
            ("8080:70000", "GUESTPORT"),
            ("8080:80/sctp", "tcp or udp"),
            ("::1:8080:80", "':'"),
            ("host:8080:80", "IPv4"),
        ] {
            let e = bad.parse::<PortMapping>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn modes_parse() {
        assert_eq!("none".parse::<NetworkMode>().unwrap(), NetworkMode::None);
        assert_eq!("nat".parse::<NetworkMode>().unwrap(), NetworkMode::Nat);
        assert_eq!(
            "ns:/run/netns/a".parse::<NetworkMode>().unwrap(),
            NetworkMode::Netns("/run/netns/a".into())
        );
        assert!("host".parse::<NetworkMode>().is_err());
    }

    #[test]
    fn the_nat_network_hands_out_hosts_only() {
        let n = NatNetwork {
            bridge: BRIDGE.into(),
            subnet: "10.77.0.0/29".parse().unwrap(),
            gateway: "10.77.0.1".parse().unwrap(),
        };
        let hosts: Vec<String> = n.hosts().map(|h| h.to_string()).collect();
        assert_eq!(
            hosts,
            [
                "10.77.0.2",
                "10.77.0.3",
                "10.77.0.4",
                "10.77.0.5",
                "10.77.0.6"
            ]
        );
    }

    #[test]
    fn loopback_nameservers_are_not_handed_to_guests() {
        assert_eq!(
            host_nameservers("nameserver 127.0.0.53\nnameserver 192.168.1.1\n"),
            ["192.168.1.1"]
        );
        assert_eq!(host_nameservers("# nothing\n"), ["8.8.8.8", "8.8.4.4"]);
    }

    #[test]
    fn a_nat_attachment_becomes_one_configure_call() {
        let a = Attachment {
            mode: NetworkMode::Nat,
            tap: Some("bx0".into()),
            interface: Some(GuestInterface {
                mac: "02:b0:c5:77:00:02".into(),
                addresses: vec!["10.77.0.2/24".into()],
                mtu: 1500,
                routes: vec![("default".into(), "10.77.0.1".into())],
            }),
            dns: vec!["8.8.8.8".into()],
            ports: vec![],
        };
        assert_eq!(a.ip().as_deref(), Some("10.77.0.2"));
        let r = a.guest_request();
        assert_eq!(r.interfaces[0].name, "eth0");
        assert_eq!(r.routes[0].gateway, "10.77.0.1");
        assert_eq!(r.routes[0].interface_mac, "02:b0:c5:77:00:02");
        assert_eq!(r.dns_servers, ["8.8.8.8"]);
    }
}
