use std::pin::Pin; use std::task::{Context, Poll}; use std::rc::Rc;
struct Io(Rc<()>);
impl tokio::io::AsyncRead for Io { fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut tokio::io::ReadBuf<'_>) -> Poll<std::io::Result<()>> { unimplemented!() } }
impl tokio::io::AsyncWrite for Io {
  fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<std::io::Result<usize>> { unimplemented!() }
  fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> { unimplemented!() }
  fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> { unimplemented!() } }
fn main() {
  println!("size_of h2::server::Connection<Io(8 B), Bytes> = {}", std::mem::size_of::<h2::server::Connection<Io, bytes::Bytes>>());
  println!("size_of h2::server::Handshake<Io, Bytes> = {}", std::mem::size_of::<h2::server::Handshake<Io, bytes::Bytes>>());
  println!("size_of h2::server::SendResponse<Bytes> = {}", std::mem::size_of::<h2::server::SendResponse<bytes::Bytes>>());
  println!("size_of http::Request<h2::RecvStream> = {}", std::mem::size_of::<http::Request<h2::RecvStream>>());
}
