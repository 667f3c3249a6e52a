//! The byte stream under a connection: the TCP socket itself or, with TLS, one end of a local
//! socket pair whose other end a pump task copies to and from the TLS session. Either way the
//! outbox keeps its non-blocking writes (a TLS session cannot be written through `&self`), and
//! plain TCP pays nothing for TLS existing.

use std::io::IoSlice;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{tcp, unix, TcpStream, UnixStream};
use tracing::debug;

/// What a connecting side needs for TLS.
#[derive(Debug, Clone)]
pub struct TlsClient {
    pub config: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must carry; by default the host of the address
    /// connected to (a DNS name or an IP address).
    pub server_name: Option<String>,
}

pub(crate) enum ReadSocket {
    Tcp(tcp::OwnedReadHalf),
    Local(unix::OwnedReadHalf),
}

pub(crate) enum WriteSocket {
    Tcp(tcp::OwnedWriteHalf),
    Local(unix::OwnedWriteHalf),
}

impl AsyncRead for ReadSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ReadSocket::Tcp(socket) => Pin::new(socket).poll_read(cx, buf),
            ReadSocket::Local(socket) => Pin::new(socket).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            WriteSocket::Tcp(socket) => Pin::new(socket).poll_write(cx, buf),
            WriteSocket::Local(socket) => Pin::new(socket).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            WriteSocket::Tcp(socket) => Pin::new(socket).poll_flush(cx),
            WriteSocket::Local(socket) => Pin::new(socket).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            WriteSocket::Tcp(socket) => Pin::new(socket).poll_shutdown(cx),
            WriteSocket::Local(socket) => Pin::new(socket).poll_shutdown(cx),
        }
    }
}

impl WriteSocket {
    /// Writes what the socket takes now without waiting (`WouldBlock` if nothing).
    pub(crate) fn try_write_vectored(&self, slices: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            WriteSocket::Tcp(socket) => socket.try_write_vectored(slices),
            WriteSocket::Local(socket) => socket.try_write_vectored(slices),
        }
    }

    pub(crate) async fn writable(&self) -> std::io::Result<()> {
        match self {
            WriteSocket::Tcp(socket) => socket.writable().await,
            WriteSocket::Local(socket) => socket.writable().await,
        }
    }

    /// Ends the sending direction (the peer reads end of stream), without waiting.
    pub(crate) fn shutdown_write(&self) {
        let _ = match self {
            WriteSocket::Tcp(socket) => {
                socket2::SockRef::from(socket.as_ref()).shutdown(Shutdown::Write)
            }
            WriteSocket::Local(socket) => {
                socket2::SockRef::from(socket.as_ref()).shutdown(Shutdown::Write)
            }
        };
    }
}

/// A plain TCP connection's halves.
pub(crate) fn plain(stream: TcpStream) -> (ReadSocket, WriteSocket) {
    let (reader, writer) = stream.into_split();
    (ReadSocket::Tcp(reader), WriteSocket::Tcp(writer))
}

/// Runs TLS over `tls` in a pump task and hands back the local ends.
fn pumped<S>(mut tls: S) -> std::io::Result<(ReadSocket, WriteSocket)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut pump_end, connection_end) = UnixStream::pair()?;
    tokio::spawn(async move {
        // Ends when either side closes; closing one side closes the other.
        if let Err(err) = tokio::io::copy_bidirectional(&mut tls, &mut pump_end).await {
            debug!(%err, "tls session ended");
        }
    });
    let (reader, writer) = connection_end.into_split();
    Ok((ReadSocket::Local(reader), WriteSocket::Local(writer)))
}

/// The client side of a TLS session to `addr` (`host:port`) over `stream`.
pub(crate) async fn tls_client(
    stream: TcpStream,
    addr: &str,
    tls: &TlsClient,
) -> std::io::Result<(ReadSocket, WriteSocket)> {
    let host = match &tls.server_name {
        Some(name) => name.clone(),
        None => host_of(addr).to_string(),
    };
    let name = ServerName::try_from(host.clone()).map_err(|err| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{host:?} is not a valid TLS server name: {err}"),
        )
    })?;
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let session = connector.connect(name, stream).await?;
    pumped(session)
}

/// The server side of a TLS session over an accepted `stream`.
pub(crate) async fn tls_server(
    stream: TcpStream,
    config: &Arc<rustls::ServerConfig>,
) -> std::io::Result<(ReadSocket, WriteSocket)> {
    let session = tokio_rustls::TlsAcceptor::from(config.clone())
        .accept(stream)
        .await?;
    pumped(session)
}

/// `host` of `host:port` (`[v6]:port` too): the name a TLS server's certificate must carry.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn hosts_come_from_addresses() {
        assert_eq!(host_of("broker-0.brokers:10911"), "broker-0.brokers");
        assert_eq!(host_of("127.0.0.1:9876"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9876"), "::1");
    }
}
