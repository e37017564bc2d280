//! Cache messages through the peer server: delivered to the vdisk's cache
//! endpoint with the sender's name from its certificate, data and all;
//! dropped when nobody takes them or the sender is no member; a malformed
//! one closes the connection.

use std::time::{Duration, Instant};

use backend::cache::{Down, Stamped, Up};
use backend::wire::CacheMessage;

use super::support::{Received, Recorder};
use super::*;

const CACHED: u64 = 9;

impl Recorder {
    /// What it got, once it got `count` messages (or after 10 s).
    fn got(&self, count: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.lock().unwrap().len() < count && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.0.lock().unwrap().clone()
    }
}

fn write_up() -> CacheMessage {
    CacheMessage::ToParent {
        instance: 77,
        msg: Up::Write {
            id: 3,
            extent: 2,
            oldest: 3,
        },
        at: 4096,
    }
}

fn recall_down() -> CacheMessage {
    CacheMessage::ToChild(Stamped {
        epoch: 2,
        seq: 5,
        generation: 1,
        msg: Down::Recall { extent: 2 },
    })
}

impl Client {
    fn send_cache(&mut self, vdisk: u64, message: CacheMessage, data: &[u8]) {
        let (head, body) = message.encode(vdisk, data).unwrap();
        let frame = [&head[..], &body[..], data].concat();
        self.stream.write_all(&frame).unwrap();
        self.stream.flush().unwrap();
    }
}

#[test]
fn cache_messages_reach_the_vdisks_endpoint_named_by_certificate() {
    let server = Server::start();
    let recorder = Arc::new(Recorder::default());
    server.exports.insert_cache(CACHED, recorder.clone());
    let mut client = server.connect();
    let data = pattern(8192, 4);
    client.send_cache(CACHED, write_up(), &data);
    client.send_cache(CACHED, recall_down(), &[]);
    // A message for a vdisk this node caches nothing of is dropped, and
    // the connection goes on.
    client.send_cache(CACHED + 1, recall_down(), &[]);
    assert_eq!(client.call(VDISK, EPOCH, Op::Heartbeat, &[]).0, Status::Ok);
    let got = recorder.got(2);
    assert_eq!(
        got,
        [
            ("client".to_owned(), write_up(), Some(data)),
            ("client".to_owned(), recall_down(), None),
        ]
    );
    server.stop().unwrap();
}

#[test]
fn a_non_member_s_cache_messages_are_dropped() {
    let server = Server::start();
    let recorder = Arc::new(Recorder::default());
    server.exports.insert_cache(CACHED, recorder.clone());
    server
        .exports
        .admit_only(Some(["someone else".to_owned()].into()));
    let mut client = server.connect();
    client.send_cache(CACHED, recall_down(), &[]);
    assert_eq!(
        client.call(VDISK, EPOCH, Op::Heartbeat, &[]).0,
        Status::Nack(Nack::NotAMember)
    );
    assert!(recorder.got(0).is_empty());
    server.stop().unwrap();
}

#[test]
fn a_malformed_cache_message_closes_the_connection_and_reaches_nobody() {
    let server = Server::start();
    let recorder = Arc::new(Recorder::default());
    server.exports.insert_cache(CACHED, recorder.clone());
    let mut client = server.connect();
    let (head, mut body) = recall_down().encode(CACHED, &[]).unwrap();
    // A word the recall does not use, set: the body's checksum is made to
    // match, so only the body's rules can refuse it.
    body[56] = 1;
    let header = Header::decode(&head).unwrap();
    let resealed = Frame::Cache {
        vdisk: CACHED,
        toward: backend::wire::Toward::Child,
        code: 3,
    }
    .encode(&body)
    .unwrap();
    assert!(matches!(header.frame, Frame::Cache { .. }));
    client.stream.write_all(&resealed).unwrap();
    client.stream.write_all(&body).unwrap();
    assert!(client.closed_by_server());
    assert!(recorder.got(0).is_empty());
    server.stop().unwrap();
}
