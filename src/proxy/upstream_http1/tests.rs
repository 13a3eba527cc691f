use std::time::Duration;

use pingora_core::protocols::http::HttpTask;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_error::ErrorType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::proxy::headers::{RequestBody, UpstreamRequest};

const TIMEOUT: Option<Duration> = Some(Duration::from_secs(5));

/// An edge-side connection and the upstream's end of it.
async fn pair() -> (Http1Connection, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
    let stream: Stream = Box::new(L4Stream::from(client.unwrap()));
    (Http1Connection::new(stream, TIMEOUT, TIMEOUT), accepted.unwrap().0)
}

fn request(body: RequestBody) -> UpstreamRequest {
    UpstreamRequest {
        head: b"GET / HTTP/1.1\r\nhost: upstream\r\n\r\n".to_vec(),
        body,
        upgrade: false,
        head_method: false,
    }
}

/// What the upstream received so far (waits for at least `at_least` bytes).
async fn received(upstream: &mut TcpStream, at_least: usize) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while seen.len() < at_least {
        let read = upstream.read(&mut buffer).await.unwrap();
        assert!(read > 0, "closed after {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..read]);
    }
    seen
}

/// Reads the whole response: its heads (status codes) and body; whether the body ended.
async fn response(connection: &mut Http1Connection) -> pingora_error::Result<(Vec<u16>, Vec<u8>)> {
    let mut statuses = Vec::new();
    let mut body = Vec::new();
    loop {
        match connection.read_task().await? {
            HttpTask::Header(header, end) => {
                statuses.push(header.status.as_u16());
                if end {
                    return Ok((statuses, body));
                }
            }
            HttpTask::Body(data, end) | HttpTask::UpgradedBody(data, end) => {
                body.extend_from_slice(&data.unwrap_or_default());
                if end {
                    return Ok((statuses, body));
                }
            }
            HttpTask::Done => return Ok((statuses, body)),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Sends `answer` (in pieces of `piece` bytes) to a bodiless request and reads the response.
async fn exchange(answer: &[u8], piece: usize) -> (pingora_error::Result<(Vec<u16>, Vec<u8>)>, bool) {
    let (mut connection, mut upstream) = pair().await;
    connection.send_head(&request(RequestBody::Empty)).await.unwrap();
    let answer = answer.to_vec();
    let writer = tokio::spawn(async move {
        for part in answer.chunks(piece) {
            upstream.write_all(part).await.unwrap();
            upstream.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        upstream
    });
    let result = response(&mut connection).await;
    let _upstream = writer.await.unwrap();
    let reusable = connection.into_reusable().is_ok();
    (result, reusable)
}

#[tokio::test]
async fn a_response_framed_by_length_is_read_whole_and_the_connection_kept() {
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Case: Kept\r\n\r\nhello";
    for piece in [answer.len(), 1] {
        let (result, reusable) = exchange(answer, piece).await;
        let (statuses, body) = result.unwrap();
        assert_eq!((statuses, body), (vec![200], b"hello".to_vec()), "piece {piece}");
        assert!(reusable, "piece {piece}");
    }
}

#[tokio::test]
async fn chunked_bodies_are_decoded_across_any_split_with_extensions_and_trailers() {
    let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
        5;name=\"v\"\r\nhello\r\n1 ; x\r\n \r\nA\r\n0123456789\r\n0\r\nTrailer-One: 1\r\n\r\n";
    for piece in [answer.len(), 7, 1] {
        let (result, reusable) = exchange(answer, piece).await;
        let (statuses, body) = result.unwrap();
        assert_eq!(statuses, [200]);
        assert_eq!(body, b"hello 0123456789", "piece {piece}");
        assert!(reusable, "piece {piece}");
    }
}

#[tokio::test]
async fn informational_heads_come_first_and_bodiless_statuses_end_at_the_head() {
    let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
        HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n";
    let (result, reusable) = exchange(answer, answer.len()).await;
    assert_eq!(result.unwrap(), (vec![100, 103, 204], Vec::new()));
    assert!(reusable);

    let (mut connection, mut upstream) = pair().await;
    let mut head = request(RequestBody::Empty);
    head.head_method = true;
    connection.send_head(&head).await.unwrap();
    upstream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(response(&mut connection).await.unwrap(), (vec![200], Vec::new()));
    assert!(connection.into_reusable().is_ok(), "HEAD: the length describes no body");
}

#[tokio::test]
async fn connections_the_response_does_not_keep_are_not_reused() {
    let cases: [(&[u8], &str); 6] = [
        (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            "close",
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", "HTTP/1.0 by default"),
        (b"HTTP/1.1 200 OK\r\n\r\nok", "until close"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            "both framings",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
            "no chunked coding",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
            "bytes beyond the body",
        ),
    ];
    for (answer, case) in cases {
        let (mut connection, mut upstream) = pair().await;
        connection.send_head(&request(RequestBody::Empty)).await.unwrap();
        upstream.write_all(answer).await.unwrap();
        if case == "until close" || case == "no chunked coding" {
            upstream.shutdown().await.unwrap();
        }
        let (statuses, body) = response(&mut connection).await.unwrap();
        assert_eq!((statuses, body), (vec![200], b"ok".to_vec()), "{case}");
        assert!(connection.into_reusable().is_err(), "{case}");
    }
    let (mut connection, mut upstream) = pair().await;
    connection.send_head(&request(RequestBody::Empty)).await.unwrap();
    upstream
        .write_all(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok")
        .await
        .unwrap();
    response(&mut connection).await.unwrap();
    assert!(connection.into_reusable().is_ok(), "HTTP/1.0 asking for keep-alive");
}

#[tokio::test]
async fn malformed_framing_is_an_error_not_a_guess() {
    let cases: [(&[u8], &str); 9] = [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
            "conflicting lengths",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok", "conflicting list"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", "signed length"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n",
            "bare LF",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000002\r\nok\r\n",
            "17 hex digits",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2x\r\nok\r\n",
            "junk after the size",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokk\r\n0\r\n\r\n",
            "data past its size",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;\x01\r\nok\r\n",
            "control in extension",
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            "101 unasked",
        ),
    ];
    for (answer, case) in cases {
        let (result, reusable) = exchange(answer, answer.len()).await;
        let error = result.expect_err(case);
        assert_eq!(error.etype(), &ErrorType::InvalidHTTPHeader, "{case}: {error}");
        assert!(!reusable, "{case}");
    }
    // Cut short: the upstream closed before the end its framing promised.
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-",
    ] {
        let (mut connection, mut upstream) = pair().await;
        let head = request(RequestBody::Empty);
        connection.send_head(&head).await.unwrap();
        // Read first: closing with unread bytes would reset the connection instead.
        received(&mut upstream, head.head.len()).await;
        upstream.write_all(answer).await.unwrap();
        drop(upstream);
        let error = response(&mut connection).await.expect_err("cut short");
        assert_eq!(error.etype(), &ErrorType::ConnectionClosed, "{error}");
    }
}

#[tokio::test]
async fn response_heads_are_bounded() {
    let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
    while huge.len() <= MAX_RESPONSE_HEAD_BYTES {
        huge.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
    }
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for index in 0..=MAX_RESPONSE_FIELDS {
        many.extend_from_slice(format!("X-{index}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    for (answer, case) in [(huge, "too large"), (many, "too many fields")] {
        let (mut connection, mut upstream) = pair().await;
        connection.send_head(&request(RequestBody::Empty)).await.unwrap();
        let writer = tokio::spawn(async move {
            let _ = upstream.write_all(&answer).await;
            upstream
        });
        let error = response(&mut connection).await.expect_err(case);
        assert_eq!(error.etype(), &ErrorType::InvalidHTTPHeader, "{case}: {error}");
        drop(writer.await);
    }
}

#[tokio::test]
async fn request_bodies_go_out_as_framed_and_no_longer() {
    let (mut connection, mut upstream) = pair().await;
    connection.send_head(&request(RequestBody::Chunked)).await.unwrap();
    connection.write_body(b"hello").await.unwrap();
    connection.write_body(&[b'x'; 300]).await.unwrap();
    connection.finish_body().await.unwrap();
    let head = request(RequestBody::Empty).head;
    let expected = [&head[..], b"5\r\nhello\r\n12c\r\n", &[b'x'; 300], b"\r\n0\r\n\r\n"].concat();
    assert_eq!(received(&mut upstream, expected.len()).await, expected);

    let (mut connection, mut upstream) = pair().await;
    connection.send_head(&request(RequestBody::Length(4))).await.unwrap();
    connection.write_body(b"ab").await.unwrap();
    let error = connection.write_body(b"cde").await.expect_err("longer than announced");
    assert_eq!(error.etype(), &ErrorType::InvalidHTTPHeader);
    assert!(connection.finish_body().await.is_err(), "shorter than announced");
    connection.write_body(b"cd").await.unwrap();
    connection.finish_body().await.unwrap();
    assert_eq!(
        received(&mut upstream, head.len() + 4).await,
        [&head[..], b"abcd"].concat()
    );
}

#[tokio::test]
async fn a_101_to_a_websocket_request_turns_both_ways_into_raw_bytes() {
    let (mut connection, mut upstream) = pair().await;
    let mut websocket = request(RequestBody::Empty);
    websocket.upgrade = true;
    connection.send_head(&websocket).await.unwrap();
    upstream
        .write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nfrom-upstream",
        )
        .await
        .unwrap();
    let HttpTask::Header(header, false) = connection.read_task().await.unwrap() else {
        panic!("a head that does not end the exchange");
    };
    assert_eq!(header.status, 101);
    let HttpTask::UpgradedBody(Some(data), false) = connection.read_task().await.unwrap() else {
        panic!("raw bytes");
    };
    assert_eq!(&data[..], b"from-upstream");
    connection.write_body(b"from-client").await.unwrap();
    let head_length = websocket.head.len();
    assert_eq!(
        &received(&mut upstream, head_length + 11).await[head_length..],
        b"from-client"
    );
    drop(upstream);
    assert!(matches!(
        connection.read_task().await.unwrap(),
        HttpTask::UpgradedBody(None, true)
    ));
    assert!(connection.into_reusable().is_err());
}

#[tokio::test]
async fn a_silent_upstream_times_out() {
    let (connection, _upstream) = pair().await;
    let stream = connection.stream;
    let mut connection = Http1Connection::new(stream, Some(Duration::from_millis(50)), TIMEOUT);
    connection.send_head(&request(RequestBody::Empty)).await.unwrap();
    let error = connection.read_task().await.expect_err("silence");
    assert_eq!(error.etype(), &ErrorType::ReadTimedout);
}

#[test]
fn chunk_size_lines() {
    let mut buffer = [0u8; 18];
    assert_eq!(chunk_size_line(0, &mut buffer), b"0\r\n");
    assert_eq!(chunk_size_line(0x1a2b, &mut buffer), b"1a2b\r\n");
    assert_eq!(chunk_size_line(usize::MAX, &mut buffer), b"ffffffffffffffff\r\n");
    assert_eq!(parse_chunk_size(b"ffffffffffffffff").unwrap(), u64::MAX);
    assert_eq!(parse_chunk_size(b"A; ext=\"1\"").unwrap(), 10);
    assert!(parse_chunk_size(b"").is_err());
    assert!(parse_chunk_size(b"-1").is_err());
    assert_eq!(parse_decimal(b"0012"), Some(12));
    assert_eq!(parse_decimal(b"99999999999999999999"), None);
}

/// The final head of `answer` (sent at once) to a request, and whether the connection is kept.
async fn final_head(answer: &[u8], head_method: bool) -> (pingora_error::Result<Box<ResponseHeader>>, bool) {
    let (mut connection, mut upstream) = pair().await;
    let mut head = request(RequestBody::Empty);
    head.head_method = head_method;
    connection.send_head(&head).await.unwrap();
    upstream.write_all(answer).await.unwrap();
    let header = loop {
        match connection.read_task().await {
            Ok(HttpTask::Header(header, _)) if !header.status.is_informational() => break Ok(header),
            Ok(HttpTask::Header(..)) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(error) => break Err(error),
        }
    };
    if header.is_ok() {
        while !matches!(connection.read_task().await, Ok(HttpTask::Done) | Err(_)) {}
    }
    (header, connection.into_reusable().is_ok())
}

#[tokio::test]
async fn transfer_encoding_overrides_and_removes_content_length_wherever_it_appears() {
    for (answer, head_method) in [
        (
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n2\r\nok\r\n0\r\n\r\n"[..],
            false,
        ),
        (
            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n",
            true,
        ),
    ] {
        let (header, reusable) = final_head(answer, head_method).await;
        let header = header.unwrap();
        assert!(header.headers.get("content-length").is_none(), "{header:?}");
        assert!(header.headers.get("transfer-encoding").is_some());
        assert!(!reusable, "both framings: never trusted again");
    }
}

#[tokio::test]
async fn content_length_is_checked_even_where_it_delimits_nothing() {
    for (answer, head_method) in [
        (
            &b"HTTP/1.1 304 Not Modified\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"[..],
            false,
        ),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: abc\r\n\r\n", false),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", true),
    ] {
        let (header, reusable) = final_head(answer, head_method).await;
        let error = header.expect_err("invalid length");
        assert_eq!(error.etype(), &ErrorType::InvalidHTTPHeader);
        assert!(!reusable);
    }
    let (header, reusable) = final_head(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", true).await;
    assert_eq!(
        header.unwrap().headers.get("content-length").unwrap(),
        "7",
        "passed on for HEAD"
    );
    assert!(reusable);
}

#[tokio::test]
async fn list_and_version_edge_cases_of_the_framing_fields() {
    // An empty last list element does not hide chunked.
    let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    let (result, reusable) = exchange(answer, answer.len()).await;
    assert_eq!(result.unwrap(), (vec![200], b"ok".to_vec()));
    assert!(reusable);
    // Chunked in HTTP/1.0 is read, but the connection is not kept.
    let answer = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    let (result, reusable) = exchange(answer, answer.len()).await;
    assert_eq!(result.unwrap(), (vec![200], b"ok".to_vec()));
    assert!(!reusable);
    // `close` wins over `keep-alive`.
    let answer = b"HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 2\r\n\r\nok";
    let (result, reusable) = exchange(answer, answer.len()).await;
    assert_eq!(result.unwrap(), (vec![200], b"ok".to_vec()));
    assert!(!reusable);
    // Whitespace before the colon is cleaned, not refused (RFC 9112 §5.1).
    let (header, reusable) = final_head(b"HTTP/1.1 200 OK\r\nX-Spaced : yes\r\nContent-Length: 0\r\n\r\n", false).await;
    assert_eq!(header.unwrap().headers.get("x-spaced").unwrap(), "yes");
    assert!(reusable);
}

#[tokio::test]
async fn more_malformed_framing() {
    let long_extension = format!("2;{}\r\nok\r\n0\r\n\r\n", "x".repeat(MAX_CHUNK_LINE_BYTES));
    let long_trailers = format!("0\r\nX-Trailer: {}\r\n\r\n", "x".repeat(MAX_TRAILER_BYTES));
    let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let cases = [
        (format!("{chunked}{long_extension}"), "chunk line too long"),
        (format!("{chunked}{long_trailers}"), "trailers too long"),
        (format!("{chunked}5\r\r\nhello\r\n0\r\n\r\n"), "CR CR LF"),
        (
            format!("{chunked}2\r\nok\r\n0\r\nX-Bare: 1\n\r\n"),
            "bare LF in trailers",
        ),
        (
            "HTTP/1.1 200 OK\r\nFolded: a\r\n b\r\nContent-Length: 0\r\n\r\n".into(),
            "obsolete folding",
        ),
    ];
    for (answer, case) in cases {
        let answer = answer.into_bytes();
        let (result, reusable) = exchange(&answer, answer.len()).await;
        let error = result.expect_err(case);
        assert_eq!(error.etype(), &ErrorType::InvalidHTTPHeader, "{case}: {error}");
        assert!(!reusable, "{case}");
    }
    // A 101 in HTTP/1.0 is no upgrade, even to a WebSocket request.
    let (mut connection, mut upstream) = pair().await;
    let mut websocket = request(RequestBody::Empty);
    websocket.upgrade = true;
    connection.send_head(&websocket).await.unwrap();
    upstream
        .write_all(b"HTTP/1.0 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        .await
        .unwrap();
    let error = connection.read_task().await.expect_err("HTTP/1.0 101");
    assert_eq!(error.etype(), &ErrorType::InvalidHTTPHeader);
}

#[tokio::test]
async fn reading_survives_being_cancelled_at_any_point() {
    // The request loop drops `read_task` whenever the client's body wins the race: every byte
    // must still be read exactly once.
    let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
    let (mut connection, mut upstream) = pair().await;
    connection.send_head(&request(RequestBody::Empty)).await.unwrap();
    let writer = tokio::spawn(async move {
        for byte in answer {
            upstream.write_all(&[*byte]).await.unwrap();
            tokio::time::sleep(Duration::from_micros(300)).await;
        }
        upstream
    });
    let (mut statuses, mut body, mut cancelled) = (Vec::new(), Vec::new(), 0);
    loop {
        let Ok(task) = tokio::time::timeout(Duration::from_micros(200), connection.read_task()).await else {
            cancelled += 1;
            continue;
        };
        match task.unwrap() {
            HttpTask::Header(header, _) => statuses.push(header.status.as_u16()),
            HttpTask::Body(data, end) => {
                body.extend_from_slice(&data.unwrap_or_default());
                if end {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let _upstream = writer.await.unwrap();
    assert!(cancelled > 10, "the reads were cancelled ({cancelled})");
    assert_eq!(statuses, [100, 200]);
    assert_eq!(body, b"hello world");
    assert!(connection.into_reusable().is_ok());
}

/// The sizes of the body pieces `read_task` hands out for `answer`, all of it already sent.
async fn body_pieces(answer: Vec<u8>) -> Vec<usize> {
    let (mut connection, mut upstream) = pair().await;
    connection.send_head(&request(RequestBody::Empty)).await.unwrap();
    upstream.write_all(&answer).await.unwrap();
    // Everything is in the socket before the first read (loopback buffers hold far more).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut pieces = Vec::new();
    loop {
        match connection.read_task().await.unwrap() {
            HttpTask::Header(_, false) => {}
            HttpTask::Body(Some(data), end) => {
                pieces.push(data.len());
                if end {
                    return pieces;
                }
            }
            HttpTask::Body(None, true) => return pieces,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn long_bodies_are_read_in_large_pieces_not_head_sized_ones() {
    const BODY: usize = 2 * MAX_BODY_READ_BYTES;
    // By length: the first piece shares the head's read, the rest come a length's worth at a time.
    let mut answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n").into_bytes();
    answer.resize(answer.len() + BODY, b'v');
    let pieces = body_pieces(answer).await;
    assert_eq!(pieces.iter().sum::<usize>(), BODY);
    assert!(pieces.len() <= 4, "{pieces:?}");
    assert!(pieces[1..].contains(&MAX_BODY_READ_BYTES), "{pieces:?}");

    // Chunked (length unknown): each read that fills its room doubles the next one's, up to the
    // most; 2 × 64 KiB read 8 KiB at a time was 16 pieces.
    let mut answer = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{BODY:x}\r\n").into_bytes();
    answer.resize(answer.len() + BODY, b'v');
    answer.extend_from_slice(b"\r\n0\r\n\r\n");
    let pieces = body_pieces(answer).await;
    assert_eq!(pieces.iter().sum::<usize>(), BODY);
    assert!(pieces.len() <= 6, "{pieces:?}");
    assert!(pieces.iter().all(|&piece| piece <= MAX_BODY_READ_BYTES), "{pieces:?}");
    assert!(pieces.windows(2).take(3).all(|pair| pair[1] >= pair[0]), "{pieces:?}");
}
