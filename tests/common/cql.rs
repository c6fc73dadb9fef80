//! A CQL v4 node for the history writer's smoke tests: the in-memory `kassandra` emulator
//! served on 127.0.0.1 over the native protocol. Not a real ScyllaDB: see `tests/scylla_history.rs`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use kassandra::KassandraSession;
use kassandra::error::DbError;
use kassandra::frame::request::Request;
use kassandra::frame::response::Response;
use kassandra::frame::response::error::Error;
use kassandra::frame::{request_stream, response_sink};

/// Starts the emulator on a free port, on its own thread; it lives as long as the test process.
pub fn serve() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send addr");
            let db = Arc::new(Mutex::new(KassandraSession::new()));
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                tokio::task::spawn_local(client(db.clone(), stream));
            }
        });
    });
    rx.recv().expect("emulator address")
}

async fn client(db: Arc<Mutex<KassandraSession>>, mut stream: tokio::net::TcpStream) {
    let (mut read, mut write) = stream.split();
    let mut frames = request_stream(&mut read);
    let mut sink = response_sink(&mut write);
    while let Some(Ok((frame, opcode, data))) = frames.next().await {
        let response = match Request::deserialize(opcode, &data, frame.flags) {
            Ok(request) => answer(&db, request),
            Err(_) => Response::Error(Error::new(DbError::ProtocolError, "cannot parse the request")),
        };
        if sink.send((response, frame.stream)).await.is_err() {
            break;
        }
    }
}

fn answer(db: &Mutex<KassandraSession>, request: Request<'_>) -> Response {
    let mut db = db.lock().unwrap_or_else(|e| e.into_inner());
    let result = match request {
        Request::StartUp(_) | Request::Register { .. } => return Response::Ready,
        Request::Options => return Response::options(),
        Request::Query(q) => db.process(q),
        Request::Prepare(p) => db.prepare(p),
        Request::Execute(e) => db.execute(e),
        Request::Batch(b) => db.process_batch(b),
        Request::AuthResponse => return Response::Error(Error::new(DbError::ProtocolError, "no authentication here")),
    };
    match result {
        Ok(r) => Response::Result(r),
        Err(e) => Response::Error(e),
    }
}
