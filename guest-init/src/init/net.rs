//! The guest's network, as far as guest-init owns it: the loopback interface is up in every
//! sandbox (with a network or without), configured over rtnetlink.

use rtnetlink::LinkUnspec;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("bringing {0} up: {1}")]
    Link(&'static str, #[source] rtnetlink::Error),
}

/// Brings `lo` up.
pub async fn loopback_up() -> Result<(), NetError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
    let driver = tokio::spawn(conn);
    let r = handle
        .link()
        .set(LinkUnspec::new_with_name("lo").up().build())
        .execute()
        .await;
    driver.abort();
    r.map_err(|e| NetError::Link("lo", e))
}
