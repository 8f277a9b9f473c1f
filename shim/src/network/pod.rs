//! The pod network (Kata's tc model): CNI made a network namespace holding a veth with the
//! pod's address; a TAP is created beside it, and each one's ingress is redirected to the
//! other's egress (`tc filter ... u32 match-all action mirred egress redirect`). No bridge
//! and no NAT of Box's own: the guest's NIC takes the veth's MAC, addresses and routes, so to
//! the CNI network the VM is the pod.

use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use box_guest_init::api::net::Mac;
use nix::sched::{setns, CloneFlags};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::Handle;

use super::link::{
    addresses, cidr_of, index_of, links, name_of, nl, route_dest, route_gateway, route_oif,
    routes_v4, with_handle,
};
use super::{io_err, Attached, Attachment, GuestInterface, NetworkError, NetworkMode};

/// The tc protocol for every frame: `htons(ETH_P_ALL)`, as `tc ... protocol all` sends it.
const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();
/// The ingress qdisc's handle, `ffff:`.
const INGRESS_PARENT: u32 = 0xffff_0000;

/// Wires a TAP named `tap` to the pod's veth inside `netns`; returns it with the guest's
/// interface (the veth's identity).
pub async fn attach(netns: &Path, tap: &str) -> Result<Attached, NetworkError> {
    let ns = std::fs::File::open(netns).map_err(io_err(format!(
        "opening network namespace {}",
        netns.display()
    )))?;
    let (netns, tap) = (netns.to_path_buf(), tap.to_string());
    // setns(2) moves the calling thread: a thread of its own with its own runtime, so no
    // other task ever runs in the pod's namespace.
    tokio::task::spawn_blocking(move || -> Result<Attached, NetworkError> {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| io_err(format!("entering {}", netns.display()))(e.into()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err("a runtime for the pod namespace"))?;
        rt.block_on(wire(&netns, &tap))
    })
    .await
    .map_err(|e| NetworkError::Conflict(format!("the pod network thread failed: {e}")))?
}

fn mac_of(l: &LinkMessage) -> Option<Mac> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) if b.len() == 6 => {
            Some(Mac([b[0], b[1], b[2], b[3], b[4], b[5]]))
        }
        _ => None,
    })
}

fn mtu_of(l: &LinkMessage) -> u32 {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(1500)
}

async fn wire(netns: &Path, tap: &str) -> Result<Attached, NetworkError> {
    // The TAP is opened in the pod's namespace (this thread's now), so it lives there.
    let fd: OwnedFd = box_vmm::devices::virtio::net::tap::open(tap)?;
    let attachment = with_handle(|h| async move {
        let all = links(&h).await?;
        let routes = routes_v4(&h).await?;
        let addrs = addresses(&h).await?;
        // The veth is the link the default route leaves by, else the one with an IPv4 address.
        let default_oif = routes
            .iter()
            .find(|r| route_dest(r).is_some_and(|d| d.prefix == 0))
            .and_then(route_oif);
        let veth = all
            .iter()
            .filter(|l| name_of(l).is_some_and(|n| n != "lo" && n != tap))
            .find(|l| {
                Some(l.header.index) == default_oif
                    || (default_oif.is_none()
                        && addrs.iter().any(|a| {
                            a.header.index == l.header.index
                                && cidr_of(a).is_some_and(|c| c.addr.is_ipv4())
                        }))
            })
            .ok_or_else(|| {
                NetworkError::Conflict(format!(
                    "network namespace {} has no interface with an address (did CNI run?)",
                    netns.display()
                ))
            })?;
        let veth_name = name_of(veth).unwrap_or("?").to_string();
        let mac = mac_of(veth).ok_or_else(|| {
            NetworkError::Conflict(format!("{veth_name} in {} has no MAC", netns.display()))
        })?;
        let vi = veth.header.index;
        let ti = index_of(&all, tap)
            .ok_or_else(|| NetworkError::Conflict(format!("TAP {tap} vanished")))?;
        let addresses: Vec<String> = addrs
            .iter()
            .filter(|a| a.header.index == vi)
            .filter_map(cidr_of)
            .filter(|c| match c.addr {
                IpAddr::V4(_) => true,
                // The guest makes its own link-local address.
                IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            })
            .map(|c| c.to_string())
            .collect();
        let routes: Vec<(String, String)> = routes
            .iter()
            .filter(|r| route_oif(r) == Some(vi))
            .filter_map(|r| {
                let gw = route_gateway(r)?;
                let d = route_dest(r)?;
                let dest = if d.prefix == 0 {
                    "default".into()
                } else {
                    d.to_string()
                };
                Some((dest, gw.to_string()))
            })
            .collect();
        redirect_both_ways(&h, vi, ti, &veth_name, tap).await?;
        h.link()
            .set(
                rtnetlink::LinkUnspec::new_with_index(ti)
                    .mtu(mtu_of(veth))
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("bringing {tap} up")))?;
        Ok(Attachment {
            mode: NetworkMode::Netns(netns.to_path_buf()),
            tap: Some(tap.to_string()),
            interface: Some(GuestInterface {
                mac: mac.to_string(),
                addresses,
                mtu: mtu_of(veth),
                routes,
            }),
            // CNI results carry DNS settings the shim passes on; none are known here.
            dns: Vec::new(),
            ports: Vec::new(),
        })
    })
    .await?;
    Ok(Attached {
        attachment,
        tap: Some(fd),
    })
}

async fn redirect_both_ways(
    h: &Handle,
    veth: u32,
    tap: u32,
    veth_name: &str,
    tap_name: &str,
) -> Result<(), NetworkError> {
    for (from, to, fname, tname) in [
        (veth, tap, veth_name, tap_name),
        (tap, veth, tap_name, veth_name),
    ] {
        h.qdisc()
            .replace(from as i32)
            .ingress()
            .execute()
            .await
            .map_err(nl(format!("an ingress qdisc on {fname}")))?;
        h.traffic_filter(from as i32)
            .add()
            .parent(INGRESS_PARENT)
            .protocol(ETH_P_ALL_BE)
            .redirect(to)
            .map_err(nl(format!("a redirect from {fname} to {tname}")))?
            .execute()
            .await
            .map_err(nl(format!("a redirect from {fname} to {tname}")))?;
    }
    Ok(())
}
