//! The host's links for the `nat` network, over rtnetlink: the `box0` bridge with the
//! gateway address, and each sandbox's TAP joined to it.

use std::net::IpAddr;

use box_guest_init::api::net::Cidr;
use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, RouteMessageBuilder};

use super::{NatNetwork, NetworkError};

pub(crate) fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}

/// A fresh rtnetlink connection in this thread's network namespace, driven while `f` runs.
pub(crate) async fn with_handle<T, F, Fut>(f: F) -> Result<T, NetworkError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: std::future::Future<Output = Result<T, NetworkError>>,
{
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(super::io_err("opening a netlink socket"))?;
    let driver = tokio::spawn(conn);
    let r = f(handle).await;
    driver.abort();
    r
}

pub(crate) async fn links(h: &Handle) -> Result<Vec<LinkMessage>, NetworkError> {
    h.link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing links"))
}

pub(crate) fn name_of(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

pub(crate) fn index_of(links: &[LinkMessage], name: &str) -> Option<u32> {
    links
        .iter()
        .find(|l| name_of(l) == Some(name))
        .map(|l| l.header.index)
}

pub(crate) async fn addresses(h: &Handle) -> Result<Vec<AddressMessage>, NetworkError> {
    h.address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing addresses"))
}

pub(crate) fn cidr_of(a: &AddressMessage) -> Option<Cidr> {
    a.attributes.iter().find_map(|at| match at {
        AddressAttribute::Address(ip) => Some(Cidr {
            addr: *ip,
            prefix: a.header.prefix_len,
        }),
        _ => None,
    })
}

pub(crate) async fn routes_v4(h: &Handle) -> Result<Vec<RouteMessage>, NetworkError> {
    h.route()
        .get(RouteMessageBuilder::<std::net::Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing routes"))
}

pub(crate) fn route_dest(r: &RouteMessage) -> Option<Cidr> {
    let prefix = r.header.destination_prefix_length;
    let addr = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        _ => None,
    });
    match (addr, prefix) {
        (Some(addr), p) => Some(Cidr { addr, prefix: p }),
        (None, 0) => Some(Cidr {
            addr: IpAddr::from([0, 0, 0, 0]),
            prefix: 0,
        }),
        _ => None,
    }
}

pub(crate) fn route_gateway(r: &RouteMessage) -> Option<IpAddr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        _ => None,
    })
}

pub(crate) fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

/// Makes sure the bridge exists, is up and holds the gateway address; first checks that no
/// other link's address or route overlaps the subnet (a clash would black-hole one side).
pub async fn ensure_bridge(net: &NatNetwork) -> Result<(), NetworkError> {
    with_handle(|h| async move {
        let all = links(&h).await?;
        let bridge = index_of(&all, &net.bridge);
        let name = |i: u32| {
            all.iter()
                .find(|l| l.header.index == i)
                .and_then(name_of)
                .unwrap_or("?")
                .to_string()
        };
        let clash = |what: String| {
            NetworkError::Conflict(format!(
                "the box network's subnet {} overlaps {what}: set BOX_NET_SUBNET to a free range",
                net.subnet
            ))
        };
        for a in addresses(&h).await? {
            if Some(a.header.index) == bridge {
                continue;
            }
            if let Some(c) = cidr_of(&a).filter(|c| c.addr.is_ipv4() && c.overlaps(&net.subnet)) {
                return Err(clash(format!("{c} on {}", name(a.header.index))));
            }
        }
        for r in routes_v4(&h).await? {
            let (Some(dest), oif) = (route_dest(&r), route_oif(&r)) else {
                continue;
            };
            if dest.prefix > 0 && oif != bridge && dest.overlaps(&net.subnet) {
                return Err(clash(format!(
                    "the route to {dest} via {}",
                    oif.map(name).unwrap_or_else(|| "?".into())
                )));
            }
        }
        let index = match bridge {
            Some(i) => i,
            None => {
                // Two sandboxes starting at once may both create it: the loser's EEXIST is fine.
                if let Err(e) = h
                    .link()
                    .add(LinkBridge::new(&net.bridge).build())
                    .execute()
                    .await
                {
                    if index_of(&links(&h).await?, &net.bridge).is_none() {
                        return Err(nl(format!("creating bridge {}", net.bridge))(e));
                    }
                }
                index_of(&links(&h).await?, &net.bridge).ok_or_else(|| {
                    NetworkError::Conflict(format!("bridge {} vanished as it was made", net.bridge))
                })?
            }
        };
        let gw = Cidr {
            addr: IpAddr::V4(net.gateway),
            prefix: net.subnet.prefix,
        };
        let has = addresses(&h)
            .await?
            .iter()
            .any(|a| a.header.index == index && cidr_of(a) == Some(gw));
        if !has {
            h.address()
                .add(index, gw.addr, gw.prefix)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("adding {gw} to {}", net.bridge)))?;
        }
        h.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl(format!("bringing {} up", net.bridge)))
    })
    .await
}

/// Puts the TAP on the bridge and brings it up.
pub async fn join_bridge(tap: &str, bridge: &str) -> Result<(), NetworkError> {
    with_handle(|h| async move {
        let all = links(&h).await?;
        let missing = |n: &str| NetworkError::Conflict(format!("link {n} does not exist"));
        let t = index_of(&all, tap).ok_or_else(|| missing(tap))?;
        let b = index_of(&all, bridge).ok_or_else(|| missing(bridge))?;
        h.link()
            .set(LinkUnspec::new_with_index(t).controller(b).up().build())
            .execute()
            .await
            .map_err(nl(format!("putting {tap} on {bridge}")))
    })
    .await
}

/// Whether a link of that name exists (for tests and `rm`'s checks).
pub async fn exists(name: &str) -> Result<bool, NetworkError> {
    with_handle(|h| async move { Ok(index_of(&links(&h).await?, name).is_some()) }).await
}
