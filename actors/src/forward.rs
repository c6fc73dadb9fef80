//! Sending into a bounded mailbox without losing order or the bound.
//!
//! actix's `do_send` ignores the mailbox capacity. `try_send` respects it: it fails with `Full`
//! once this sender has filled the mailbox. The fallback is `send(..).await`, which enqueues the
//! message at once and resolves when it has been handled; the sender sends nothing else in the
//! meantime, so order is kept and the mailbox grows by at most one message per sender.

use actix::dev::ToEnvelope;
use actix::prelude::*;

/// The receiving actor is gone.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the receiving actor has stopped")]
pub struct Closed;

/// Sends `msg`, waiting (only) while the receiver's mailbox is full.
pub async fn forward<A, M>(addr: &Addr<A>, msg: M) -> Result<(), Closed>
where
    A: Actor + Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    match addr.try_send(msg) {
        Ok(()) => Ok(()),
        Err(SendError::Full(msg)) => addr.send(msg).await.map(drop).map_err(|_| Closed),
        Err(SendError::Closed(_)) => Err(Closed),
    }
}

/// A no-op message: when its reply comes back, everything sent before it has been handled.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;

/// From inside an actor's handler: sends `msg`, and if the receiver is full, pauses this actor
/// (no other message of its mailbox is handled) until the receiver has caught up.
///
/// On `Full` the message is pushed at once with `do_send` (so it keeps its place, even when a
/// handler forwards several messages in a row), then the actor waits on a [`Ping`] behind it.
/// The mailbox thus overshoots its bound by at most the messages one handler forwards.
pub fn forward_from<S, A, M>(ctx: &mut S::Context, addr: &Addr<A>, msg: M)
where
    S: Actor,
    S::Context: AsyncContext<S>,
    A: Actor + Handler<M> + Handler<Ping>,
    A::Context: ToEnvelope<A, M> + ToEnvelope<A, Ping>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    match addr.try_send(msg) {
        Ok(()) => {}
        Err(SendError::Full(msg)) => {
            addr.do_send(msg);
            let ping = addr.send(Ping);
            ctx.wait(actix::fut::wrap_future::<_, S>(async move {
                let _ = ping.await;
            }));
        }
        Err(SendError::Closed(_)) => {
            tracing::error!("downstream actor stopped; message left unacknowledged for re-delivery");
        }
    }
}
