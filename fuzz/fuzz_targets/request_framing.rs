//! Whatever bytes a caller sends, the proxy's HTTP/1.1 server waits for more, refuses (and
//! closes the connection), hands the connection to hyper, or serves a request whose body
//! length is unambiguous: no `Transfer-Encoding`, every `Content-Length` value the same (or
//! none), within the held size, and exactly one `Host` in HTTP/1.1.
#![no_main]
use api_proxy::h1_server::{decide, Admission};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(Ok((admission, req, head_len))) = decide(data, 1024) else { return };
    assert!(head_len <= data.len());
    let headers = req.headers();
    if let Admission::Held { length, .. } = admission {
        assert!(!headers.contains_key("transfer-encoding"));
        assert!(length <= 1024);
        let mut lengths = 0;
        for v in headers.get_all("content-length") {
            for part in v.to_str().expect("validated").split(',') {
                assert_eq!(part.trim().parse::<usize>().ok(), Some(length));
                lengths += 1;
            }
        }
        if lengths == 0 {
            assert_eq!(length, 0);
        }
        if format!("{:?}", req.version()) == "HTTP/1.1" {
            assert_eq!(headers.get_all("host").iter().count(), 1);
        }
    }
});
