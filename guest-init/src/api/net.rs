//! The two address types both sides of [`super::agent::ConfigureNetworkRequest`] parse: a MAC
//! and an address with its prefix length. Plain std has neither.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("MAC {0:?}: expected six hex bytes separated by ':'")]
    Mac(String),
    #[error("address {0:?}: expected ADDRESS/PREFIX, as 10.89.0.2/24")]
    Cidr(String),
}

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Mac, ParseError> {
        let bad = || ParseError::Mac(s.into());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// An interface address with its prefix length (`10.89.0.2/24`), or a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    fn max_prefix(addr: IpAddr) -> u8 {
        if addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    /// The first address of the prefix.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    /// Whether `ip` lies in this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4()
            && Cidr {
                addr: ip,
                prefix: self.prefix,
            }
            .network()
                == self.network()
    }

    /// Whether the two prefixes share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let shorter = self.prefix.min(other.prefix);
        let a = Cidr {
            addr: self.addr,
            prefix: shorter,
        };
        a.contains(other.addr)
    }
}

impl FromStr for Cidr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Cidr, ParseError> {
        let bad = || ParseError::Cidr(s.into());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > Cidr::max_prefix(addr) {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_print_and_bad_ones_are_named() {
        let m: Mac = "52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0, 0xab, 0xcd, 1]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "5:54:00:ab:cd:01",
            "zz:54:00:ab:cd:01",
        ] {
            assert_eq!(
                bad.parse::<Mac>(),
                Err(ParseError::Mac(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn cidrs_parse_contain_and_overlap() {
        let c: Cidr = "10.89.0.7/24".parse().unwrap();
        assert_eq!(c.network(), "10.89.0.0".parse::<IpAddr>().unwrap());
        assert!(c.contains("10.89.0.200".parse().unwrap()));
        assert!(!c.contains("10.89.1.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.168.1.1".parse().unwrap()));
        assert!(c.overlaps(&"10.0.0.0/8".parse().unwrap()));
        assert!("10.0.0.0/8".parse::<Cidr>().unwrap().overlaps(&c));
        assert!(!c.overlaps(&"10.90.0.0/24".parse().unwrap()));
        let v6: Cidr = "fd00::5/64".parse().unwrap();
        assert!(v6.contains("fd00::ffff".parse().unwrap()));
        for bad in ["10.0.0.1", "10.0.0.1/33", "fd00::/129", "x/8", "10.0.0.1/"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
