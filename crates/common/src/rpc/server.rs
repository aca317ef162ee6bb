//! The server end: a `Service` answers each request of a connection, in arrival order;
//! a frame that holds none of its requests is answered INVALID here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::error::error_body;
use super::framing::{write_loop, Inbound};
use crate::proto::{frame::Body, ErrorCode, Frame};

/// What a handler answers to one request.
// `Now` is the common answer and stays unboxed: boxing it would cost an allocation on
// every reply to spare a few bytes on the rare `None`/`Later`.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    /// No reply (one-way message).
    None,
    /// Reply right away.
    Now(Body),
    /// Reply when the future finishes; other requests are served meanwhile.
    Later(Pin<Box<dyn Future<Output = Body> + Send>>),
}

/// A server-side protocol. `State` lives as long as the connection.
pub trait Service: Send + Sync + 'static {
    /// Who serves, for the error answering a frame that is not one of its requests.
    const NAME: &'static str;
    /// The requests it answers, as taken out of a frame body.
    type Request: TryFrom<Body>;
    type State: Send + 'static;
    fn connected(&self) -> Self::State;
    fn handle(&self, state: &mut Self::State, request: Self::Request) -> Reply;
    fn disconnected(&self, state: Self::State);
}

pub async fn serve_connection<S: Service, T: AsyncRead + AsyncWrite + Send + 'static>(stream: T, service: Arc<S>) {
    let (read_half, write_half) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(write_loop(write_half, rx));
    run_connection(service, Inbound::socket(read_half), tx).await;
}

/// Serves one connection: each request to the handler in arrival order, each reply
/// into `tx`, until the peer goes away.
pub(super) async fn run_connection<S: Service>(
    service: Arc<S>,
    mut inbound: Inbound,
    tx: mpsc::UnboundedSender<Frame>,
) {
    let mut state = service.connected();
    while let Some(frame) = inbound.next().await {
        let Some(body) = frame.body else { continue };
        let id = frame.id;
        let reply = match S::Request::try_from(body) {
            Ok(request) => service.handle(&mut state, request),
            Err(_) => Reply::Now(error_body(ErrorCode::Invalid, format!("unsupported request for {}", S::NAME))),
        };
        match reply {
            Reply::None => {}
            Reply::Now(reply) => {
                if id != 0 {
                    let _ = tx.send(Frame { id, body: Some(reply) });
                }
            }
            Reply::Later(fut) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let reply = fut.await;
                    if id != 0 {
                        let _ = tx.send(Frame { id, body: Some(reply) });
                    }
                });
            }
        }
    }
    service.disconnected(state);
}
