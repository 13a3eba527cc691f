use std::time::Duration;

use pingora_core::protocols::l4::stream::Stream as L4Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

const TIMEOUT: Duration = Duration::from_secs(5);

/// The edge's end of a client connection and the client's.
async fn pair() -> (Http1Server, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
    let stream: Stream = Box::new(L4Stream::from(accepted.unwrap().0));
    (Http1Server::new(stream, None, TIMEOUT), client.unwrap())
}

/// What the server makes of `bytes` sent as one request.
async fn read(bytes: &[u8]) -> (Read, Http1Server, TcpStream) {
    let (mut server, mut client) = pair().await;
    client.write_all(bytes).await.unwrap();
    let read = server.read_request(TIMEOUT, TIMEOUT).await;
    (read, server, client)
}

/// Everything the client receives until the server closes.
async fn until_close(client: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    client.read_to_end(&mut seen).await.unwrap();
    String::from_utf8(seen).unwrap()
}

fn response(status: u16, fields: &[(&str, &str)]) -> ResponseHeader {
    let mut response = ResponseHeader::build_no_case(status, None).unwrap();
    for (name, value) in fields {
        response.append_header(name.to_string(), *value).unwrap();
    }
    response
}

#[tokio::test]
async fn a_plain_bodiless_request_is_taken() {
    let (read, server, _client) =
        read(b"GET /a?b=c HTTP/1.1\r\nHost: tenant.example\r\nAuthorization: Bearer x\r\nX-Thing: 1\r\n\r\n").await;
    assert!(matches!(read, Read::Request));
    let request = server.request();
    assert_eq!(request.method, Method::GET);
    assert_eq!(request.uri.path(), "/a");
    assert_eq!(request.uri.query(), Some("b=c"));
    assert_eq!(request.version, http::Version::HTTP_11);
    assert_eq!(request.headers["host"], "tenant.example");
    assert_eq!(request.headers["authorization"], "Bearer x");
    assert_eq!(request.headers["x-thing"], "1");
    assert!(server.keepalive());
}

#[tokio::test]
async fn what_changes_framing_or_the_connection_goes_to_pingora_with_every_byte() {
    let cases: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-private\r\nX-Private: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, te\r\nTE: trailers\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n",
        b"BREW\x00 / HTTP/1.1\r\nHost: a\r\n\r\n",
    ];
    for bytes in cases {
        let (read, server, _client) = read(bytes).await;
        assert!(
            matches!(read, Read::Elsewhere),
            "{:?} was taken",
            String::from_utf8_lossy(bytes)
        );
        let (_, unread) = server.into_parts();
        assert_eq!(&unread[..], *bytes, "every byte is handed over");
    }
}

#[tokio::test]
async fn a_head_longer_than_the_edge_takes_goes_to_pingora() {
    let mut bytes = b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: ".to_vec();
    bytes.extend(std::iter::repeat_n(b'a', MAX_FAST_HEAD_BYTES));
    let (mut server, mut client) = pair().await;
    client.write_all(&bytes).await.unwrap();
    assert!(matches!(server.read_request(TIMEOUT, TIMEOUT).await, Read::Elsewhere));
    let (_, unread) = server.into_parts();
    assert!(bytes.starts_with(&unread) && unread.len() >= MAX_FAST_HEAD_BYTES);

    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for index in 0..MAX_FAST_FIELDS {
        many.extend_from_slice(format!("x-{index}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let (read, _, _) = read(&many).await;
    assert!(matches!(read, Read::Elsewhere));
}

#[tokio::test]
async fn a_head_in_pieces_is_put_together_and_a_dribbler_is_cut_off() {
    let (mut server, mut client) = pair().await;
    let writer = tokio::spawn(async move {
        for piece in [&b"GET / HT"[..], b"TP/1.1\r\nHo", b"st: a\r\n", b"\r\n"] {
            client.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        client
    });
    assert!(matches!(server.read_request(TIMEOUT, TIMEOUT).await, Read::Request));
    assert_eq!(server.request().headers["host"], "a");
    let _client = writer.await.unwrap();

    let (mut server, mut client) = pair().await;
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let read = server.read_request(TIMEOUT, Duration::from_millis(100)).await;
    assert!(matches!(read, Read::End), "the rest of the head is bounded");
    assert!(started.elapsed() < Duration::from_secs(2));

    let (mut server, _client) = pair().await;
    let started = std::time::Instant::now();
    assert!(matches!(
        server.read_request(Duration::from_millis(100), TIMEOUT).await,
        Read::End
    ));
    assert!(started.elapsed() < Duration::from_secs(2), "the idle wait is bounded");
}

#[tokio::test]
async fn pipelined_requests_are_served_in_order() {
    let (mut server, mut client) = pair().await;
    client
        .write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\nPOST /three HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")
        .await
        .unwrap();
    for path in ["/one", "/two"] {
        assert!(matches!(server.read_request(TIMEOUT, TIMEOUT).await, Read::Request));
        assert_eq!(server.request().uri.path(), path);
        server
            .write_response_header(&response(200, &[("content-length", "2")]))
            .await
            .unwrap();
        server.write_response_body(b"ok", true).await.unwrap();
        assert!(server.reusable());
    }
    assert!(matches!(server.read_request(TIMEOUT, TIMEOUT).await, Read::Elsewhere));
    let (_, unread) = server.into_parts();
    assert_eq!(
        &unread[..],
        b"POST /three HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx"
    );
    let mut seen = Vec::new();
    let mut buffer = [0u8; 512];
    while String::from_utf8_lossy(&seen).matches("\r\n\r\nok").count() < 2 {
        let read = client.read(&mut buffer).await.unwrap();
        assert!(read > 0);
        seen.extend_from_slice(&buffer[..read]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
}

#[tokio::test]
async fn a_length_framed_response_goes_out_whole_with_date_and_connection() {
    let (read, mut server, mut client) = read(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(matches!(read, Read::Request));
    server
        .write_response_header(&response(
            200,
            &[
                ("content-length", "5"),
                ("date", "upstream's"),
                ("connection", "upstream's"),
                ("x-a", "1"),
            ],
        ))
        .await
        .unwrap();
    server.write_response_body(b"hel", false).await.unwrap();
    server.write_response_body(b"lo", true).await.unwrap();
    assert!(server.reusable());
    assert_eq!(server.status(), Some(StatusCode::OK));
    assert_eq!(server.body_bytes_sent(), 5);
    server.set_keepalive(false);
    server.shutdown().await;
    let text = until_close(&mut client).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert_eq!(body, "hello");
    let lines: Vec<&str> = head.split("\r\n").collect();
    assert_eq!(lines[0], "HTTP/1.1 200 OK");
    assert!(lines.contains(&"content-length: 5"));
    assert!(lines.contains(&"x-a: 1"));
    assert!(lines.contains(&"connection: keep-alive"));
    assert!(
        !head.contains("upstream's"),
        "the edge writes Date and Connection: {head}"
    );
    assert_eq!(lines.iter().filter(|line| line.starts_with("date: ")).count(), 1);
}

#[tokio::test]
async fn bodies_are_never_longer_than_their_length_and_a_short_one_closes() {
    let (_, mut server, _client) = read(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    server
        .write_response_header(&response(200, &[("content-length", "2")]))
        .await
        .unwrap();
    assert!(server.write_response_body(b"abc", false).await.is_err());
    assert!(!server.reusable());

    let (_, mut server, _client) = read(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    server
        .write_response_header(&response(200, &[("content-length", "4")]))
        .await
        .unwrap();
    server.write_response_body(b"ab", false).await.unwrap();
    assert!(server.finish_body().await.is_err(), "cut short");
    assert!(!server.reusable());
}

#[tokio::test]
async fn chunked_and_unframed_responses() {
    let (_, mut server, mut client) = read(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    server
        .write_response_header(&response(200, &[("transfer-encoding", "chunked")]))
        .await
        .unwrap();
    server.write_response_body(b"hello", false).await.unwrap();
    server.write_response_body(&[b'x'; 20], true).await.unwrap();
    assert!(server.reusable());
    server.shutdown().await;
    let text = until_close(&mut client).await;
    let (_, body) = text.split_once("\r\n\r\n").unwrap();
    assert_eq!(body, format!("5\r\nhello\r\n14\r\n{}\r\n0\r\n\r\n", "x".repeat(20)));

    let (_, mut server, mut client) = read(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    server.write_response_header(&response(200, &[])).await.unwrap();
    server.write_response_body(b"until close", true).await.unwrap();
    assert!(!server.reusable(), "a body without framing ends the connection");
    server.shutdown().await;
    let text = until_close(&mut client).await;
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nuntil close"));
}

#[tokio::test]
async fn head_204_and_304_carry_no_body_and_1xx_come_first() {
    let (_, mut server, mut client) = read(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    server
        .write_response_header(&response(103, &[("link", "</a>; rel=preload")]))
        .await
        .unwrap();
    server
        .write_response_header(&response(200, &[("content-length", "5")]))
        .await
        .unwrap();
    server.write_response_body(b"hello", true).await.unwrap();
    assert!(server.reusable());
    assert_eq!(server.status(), Some(StatusCode::OK));
    server.shutdown().await;
    let text = until_close(&mut client).await;
    assert!(text.starts_with("HTTP/1.1 103 Early Hints\r\nlink: </a>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"));
    assert!(text.ends_with("\r\n\r\n"), "no body for HEAD: {text:?}");

    for status in [204, 304] {
        let (_, mut server, mut client) = read(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        server.write_response_header(&response(status, &[])).await.unwrap();
        server.finish_body().await.unwrap();
        assert!(server.reusable());
        server.shutdown().await;
        assert!(until_close(&mut client).await.ends_with("\r\n\r\n"));
    }
}

#[tokio::test]
async fn no_second_head_and_no_upgrade() {
    let (_, mut server, _client) = read(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(server.write_response_header(&response(101, &[])).await.is_err());
    server
        .write_response_header(&response(200, &[("content-length", "0")]))
        .await
        .unwrap();
    assert!(server.write_response_header(&response(200, &[])).await.is_err());
}

#[tokio::test]
async fn error_answers_close_the_connection() {
    let (_, mut server, mut client) = read(b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    server.respond_error(405).await.unwrap();
    assert!(!server.reusable());
    server.shutdown().await;
    let text = until_close(&mut client).await;
    assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{text}");
    assert!(text.contains("connection: close\r\n"));
    assert!(text.contains("content-length: 0\r\n"));
}

#[tokio::test]
async fn connection_keep_alive_and_close_are_taken() {
    let (taken, server, _client) = read(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive\r\n\r\n").await;
    assert!(matches!(taken, Read::Request));
    assert!(server.keepalive());
    let (taken, mut server, mut client) = read(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(matches!(taken, Read::Request));
    assert!(!server.keepalive());
    server
        .write_response_header(&response(200, &[("content-length", "2")]))
        .await
        .unwrap();
    server.write_response_body(b"ok", true).await.unwrap();
    assert!(!server.reusable());
    server.shutdown().await;
    assert!(until_close(&mut client).await.contains("connection: close\r\n"));
}

#[tokio::test]
async fn blank_lines_before_a_request_are_skipped_and_do_not_shorten_the_idle_wait() {
    let (taken, server, _client) = read(b"\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(matches!(taken, Read::Request));
    assert_eq!(server.request().uri.path(), "/x");

    let (mut server, mut client) = pair().await;
    client.write_all(b"\r\n").await.unwrap();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.write_all(b"GET /y HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        client
    });
    // The header budget (100 ms) is not spent waiting after a stray CRLF: the idle wait is.
    assert!(matches!(
        server.read_request(TIMEOUT, Duration::from_millis(100)).await,
        Read::Request
    ));
    assert_eq!(server.request().uri.path(), "/y");
    let _client = writer.await.unwrap();
}

#[tokio::test]
async fn a_head_waiting_for_its_body_gives_way_to_an_error_answer() {
    let (_, mut server, mut client) = read(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    server
        .write_response_header(&response(200, &[("content-length", "10")]))
        .await
        .unwrap();
    assert_eq!(server.status(), None, "nothing reached the client yet");
    // The upstream died: the request loop answers instead.
    server.set_keepalive(false);
    server.respond_error(502).await.unwrap();
    assert_eq!(server.status(), Some(StatusCode::BAD_GATEWAY));
    server.shutdown().await;
    let text = until_close(&mut client).await;
    assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{text}");
    assert!(!text.contains("200 OK"), "{text}");
}

#[tokio::test]
async fn after_a_write_times_out_nothing_more_is_written() {
    let (mut server, mut client) = pair().await;
    server.send_timeout = Duration::from_millis(100);
    client.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert!(matches!(server.read_request(TIMEOUT, TIMEOUT).await, Read::Request));
    let size = 64 * 1024 * 1024;
    server
        .write_response_header(&response(200, &[("content-length", &size.to_string())]))
        .await
        .unwrap();
    // The client reads nothing: the socket buffers fill and the write times out.
    let started = std::time::Instant::now();
    let error = server.write_response_body(&vec![0u8; size], true).await.unwrap_err();
    assert_eq!(error.etype(), &ErrorType::WriteTimedout);
    assert!(!server.reusable());
    assert!(
        server.respond_error(500).await.is_err(),
        "no second answer after a partial one"
    );
    server.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no further waits: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_idle_connection_holds_no_read_buffer() {
    let (server, _client) = pair().await;
    assert_eq!(server.read.capacity(), 0, "nothing is held before the first request");

    let (read, mut server, _client) = read(b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x\r\n\r\n").await;
    assert!(matches!(read, Read::Request));
    server
        .write_response_header(&response(200, &[("content-length", "2")]))
        .await
        .unwrap();
    server.write_response_body(b"ok", true).await.unwrap();
    assert!(server.read.capacity() > 0);
    // Waiting for the next request (given up after 50 ms), the read buffer is gone and the
    // response buffer is small.
    assert!(matches!(
        server.read_request(Duration::from_millis(50), TIMEOUT).await,
        Read::End
    ));
    assert_eq!(server.read.capacity(), 0);
    assert!(server.out.capacity() <= IDLE_BUFFER_BYTES);
}

#[tokio::test]
async fn a_head_shorter_than_the_first_read_is_judged_at_once() {
    // Complete but malformed, in fewer bytes than the idle wait reads: pingora answers it now,
    // rather than the edge waiting out the header budget for more.
    let started = std::time::Instant::now();
    let (read, _server, _client) = read(b"X\r\n\r\n").await;
    assert!(matches!(read, Read::Elsewhere));
    assert!(started.elapsed() < Duration::from_secs(2));
}
