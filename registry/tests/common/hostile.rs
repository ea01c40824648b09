//! A tiny HTTP/1.1 server for misbehaviour no real registry has: endless bodies, lying
//! sizes, hanging and dripping answers. Each connection runs `handler(method, path,
//! stream)` on its own thread; the handler writes whatever it likes.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

pub struct Hostile {
    pub port: u16,
}

impl Hostile {
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Starts a server; it lives until the test process ends.
pub fn start(handler: impl Fn(&str, &str, &mut TcpStream) + Send + Sync + 'static) -> Hostile {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let handler = Arc::clone(&handler);
            std::thread::spawn(move || {
                // One request per connection is all a client of this server gets.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut first = head.lines().next().unwrap_or("").split(' ');
                let method = first.next().unwrap_or("").to_string();
                let path = first.next().unwrap_or("").to_string();
                handler(&method, &path, &mut stream);
            });
        }
    });
    Hostile { port }
}

/// Writes a whole response and closes.
pub fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.write_all(body);
}

/// Sends a 200 head with no length, then bytes until the client hangs up.
pub fn endless(stream: &mut TcpStream) {
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
    let chunk = vec![b'x'; 1 << 20];
    while stream.write_all(&chunk).is_ok() {}
}

/// Sends a 200 head, then one byte every `every` for as long as the client listens.
pub fn drip(stream: &mut TcpStream, every: std::time::Duration) {
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n");
    loop {
        std::thread::sleep(every);
        if stream.write_all(b"{").is_err() {
            return;
        }
    }
}

/// Reads nothing more and answers nothing, holding the connection open.
pub fn hang(_stream: &mut TcpStream) {
    std::thread::sleep(std::time::Duration::from_secs(600));
}
