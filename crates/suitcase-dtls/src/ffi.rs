//! The three OpenSSL calls rust-openssl does not bind: `DTLSv1_listen` (stateless
//! HelloVerifyRequest, rust-openssl #1162) and the `DTLSv1_get_timeout` /
//! `DTLSv1_handle_timeout` macros (`SSL_ctrl` 73 and 74). The only unsafe code of the crate.
#![allow(unsafe_code)]

use std::os::raw::{c_int, c_long, c_void};
use std::time::Duration;

use foreign_types::ForeignTypeRef as _;
use openssl::ssl::SslRef;

/// OpenSSL's opaque `BIO_ADDR`.
#[repr(C)]
struct BioAddr {
    _opaque: [u8; 0],
}

extern "C" {
    fn DTLSv1_listen(s: *mut openssl_sys::SSL, client: *mut BioAddr) -> c_int;
    fn BIO_ADDR_new() -> *mut BioAddr;
    fn BIO_ADDR_free(a: *mut BioAddr);
}

const DTLS_CTRL_GET_TIMEOUT: c_int = 73;
const DTLS_CTRL_HANDLE_TIMEOUT: c_int = 74;

/// `DTLSv1_listen` on a fresh server `SSL` whose BIO holds one datagram: 1 when it is a
/// ClientHello with a valid cookie (the `SSL` continues the handshake), 0 when it was answered
/// with a HelloVerifyRequest or dropped, < 0 on a fatal error.
pub(crate) fn listen(ssl: &SslRef) -> i32 {
    // SAFETY: `ssl` is a live SSL the caller holds exclusively (through its `&mut SslStream`); the BIO_ADDR is allocated here, only
    // written by OpenSSL during the call, and freed after it.
    unsafe {
        let addr = BIO_ADDR_new();
        if addr.is_null() {
            return -1;
        }
        let r = DTLSv1_listen(ssl.as_ptr(), addr);
        BIO_ADDR_free(addr);
        r
    }
}

/// The time left before the running DTLS retransmission timer fires (`None`: no timer).
pub(crate) fn timeout(ssl: &SslRef) -> Option<Duration> {
    let mut tv = libc::timeval { tv_sec: 0, tv_usec: 0 };
    // SAFETY: DTLS_CTRL_GET_TIMEOUT writes one `struct timeval` through `parg`.
    let r = unsafe {
        openssl_sys::SSL_ctrl(
            ssl.as_ptr(),
            DTLS_CTRL_GET_TIMEOUT,
            0 as c_long,
            std::ptr::addr_of_mut!(tv).cast::<c_void>(),
        )
    };
    (r == 1).then(|| {
        Duration::from_secs(u64::try_from(tv.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(tv.tv_usec).unwrap_or(0))
    })
}

/// Fire the DTLS retransmission timer if it expired (resends the last flight into the BIO).
pub(crate) fn handle_timeout(ssl: &SslRef) -> i32 {
    // SAFETY: DTLS_CTRL_HANDLE_TIMEOUT takes no argument.
    let r = unsafe { openssl_sys::SSL_ctrl(ssl.as_ptr(), DTLS_CTRL_HANDLE_TIMEOUT, 0, std::ptr::null_mut()) };
    i32::try_from(r).unwrap_or(-1)
}
