//! Name resolution for tool URLs: IP literals in place, names through ureq's resolver.

/// Resolves IP-literal hosts in place and hands names to ureq's resolver. ureq's own resolver
/// starts a thread for every lookup when a timeout is set, even for `127.0.0.1`: under load
/// that was hundreds of threads a second (each a fresh allocator heap and stack).
#[derive(Debug, Default)]
pub(super) struct LiteralFirst(ureq::unversioned::resolver::DefaultResolver);

impl ureq::unversioned::resolver::Resolver for LiteralFirst {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        if let Some(addr) = literal_addr(uri) {
            let mut out = self.empty();
            out.push(addr);
            return Ok(out);
        }
        self.0.resolve(uri, config, timeout)
    }
}

/// The socket address of a URI whose host is an IP address (`127.0.0.1`, `[::1]`), with its
/// port or the scheme's default.
pub(super) fn literal_addr(uri: &ureq::http::Uri) -> Option<std::net::SocketAddr> {
    let host = uri.host()?;
    let ip: std::net::IpAddr = host.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    let port = uri.port_u16().or(match uri.scheme_str()? {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    })?;
    Some(std::net::SocketAddr::new(ip, port))
}
