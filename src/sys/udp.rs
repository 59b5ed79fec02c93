//! `recvmmsg(2)` / `sendmmsg(2)` over one preallocated batch of datagram slots.
//!
//! A [`Batch`] owns `slots` receive buffers of `slot_size` bytes each, one `sockaddr_storage`
//! per slot (IPv4 or IPv6 sources alike) and the `mmsghdr`/`iovec` arrays the kernel reads.
//! [`Batch::recv`] fills the first `n` slots; [`Batch::send`] replies to a chosen subset of
//! them, each datagram to the exact address it came from, from the same bytes (no copy).
//! The header arrays are rebuilt from the owned buffers on every call, so no pointer outlives
//! the call that uses it and the batch may move between threads.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The largest UDP payload over IPv6 without jumbograms (65,535 − 8-byte UDP header); IPv4's
/// limit (65,507) is smaller. A slot this large never truncates a datagram.
pub const MAX_DATAGRAM: usize = 65_527;

/// Received datagrams and where they came from, in preallocated slots.
pub struct Batch {
    slot_size: usize,
    data: Box<[u8]>,
    addrs: Box<[libc::sockaddr_storage]>,
    /// Address length the kernel wrote for each slot.
    addr_lens: Box<[libc::socklen_t]>,
    /// Payload length of each received slot.
    lens: Box<[usize]>,
    truncated: Box<[bool]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

// SAFETY: the raw pointers inside `iovs` and `hdrs` are scratch: they are rewritten from the
// batch's own heap buffers at the start of every `recv`/`send` and never read otherwise, so
// moving the batch to another thread cannot leave a pointer aliasing anything outside it.
unsafe impl Send for Batch {}

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
    unsafe { std::mem::zeroed() }
}

fn zeroed_hdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is plain old data (null pointers, zero lengths are valid values).
    unsafe { std::mem::zeroed() }
}

impl Batch {
    /// `slots` datagrams of up to `slot_size` bytes. Memory: `slots × (slot_size + 128 + 80)`
    /// bytes, allocated zeroed (pages are touched only as large datagrams arrive).
    pub fn new(slots: usize, slot_size: usize) -> Batch {
        assert!(slots > 0 && slots <= u32::MAX as usize && slot_size > 0);
        let empty_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Batch {
            slot_size,
            data: vec![0u8; slots * slot_size].into_boxed_slice(),
            addrs: vec![zeroed_storage(); slots].into_boxed_slice(),
            addr_lens: vec![0; slots].into_boxed_slice(),
            lens: vec![0; slots].into_boxed_slice(),
            truncated: vec![false; slots].into_boxed_slice(),
            iovs: vec![empty_iov; slots].into_boxed_slice(),
            hdrs: vec![zeroed_hdr(); slots].into_boxed_slice(),
        }
    }

    pub fn slots(&self) -> usize {
        self.hdrs.len()
    }

    /// Receives up to [`Batch::slots`] datagrams without blocking (`MSG_DONTWAIT`); returns how
    /// many, or `WouldBlock` when none is queued. `EINTR` is retried.
    pub fn recv(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        let slots = self.slots();
        let base = self.data.as_mut_ptr();
        for i in 0..slots {
            // Each iovec covers slot i of `data`, in bounds by construction.
            self.iovs[i] = libc::iovec {
                iov_base: base.wrapping_add(i * self.slot_size).cast(),
                iov_len: self.slot_size,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        let n = super::retry(|| {
            syscall!(recvmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                slots as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut()
            ))
        })? as usize;
        for i in 0..n {
            let h = &self.hdrs[i];
            self.lens[i] = (h.msg_len as usize).min(self.slot_size);
            self.addr_lens[i] = h.msg_hdr.msg_namelen;
            self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(n)
    }

    /// The payload received in slot `i` (of the last [`Batch::recv`]).
    pub fn payload(&self, i: usize) -> &[u8] {
        &self.data[i * self.slot_size..][..self.lens[i]]
    }

    /// True if slot `i`'s datagram was larger than the slot (its tail was cut off).
    pub fn truncated(&self, i: usize) -> bool {
        self.truncated[i]
    }

    /// Where slot `i`'s datagram came from; `None` for a family other than IPv4/IPv6.
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        super::socket_addr(&self.addrs[i], self.addr_lens[i])
    }

    /// Test hook: pretends slot `i` came from `addr` (to make one reply fail on purpose).
    #[cfg(test)]
    pub fn set_source(&mut self, i: usize, addr: SocketAddr) {
        let sa = socket2::SockAddr::from(addr);
        let len = sa.len() as usize;
        assert!(len <= std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: copies `len` bytes of a valid socket address into slot i's storage, which is
        // at least that large (checked above); the two do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                sa.as_ptr().cast::<u8>(),
                (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast::<u8>(),
                len,
            )
        };
        self.addr_lens[i] = sa.len();
    }

    /// Echoes the received slots listed in `which` (each `< ` the last `recv`'s count), each to
    /// its own source, with one `sendmmsg(MSG_DONTWAIT)`. Returns how many of the first ones the
    /// kernel took (possibly fewer than asked: the next one failed or the socket is full; call
    /// again with the rest to learn which). An error means the first one was not sent.
    pub fn send(&mut self, fd: BorrowedFd<'_>, which: &[u32]) -> io::Result<usize> {
        let count = which.len().min(self.slots());
        if count == 0 {
            return Ok(0);
        }
        let base = self.data.as_mut_ptr();
        for (j, &slot) in which[..count].iter().enumerate() {
            let i = slot as usize;
            assert!(i < self.slots(), "slot {i} out of range");
            // The iovec of the j-th message to send: slot i's received bytes. `iovs[j]` is
            // free to reuse: every slot's length is kept in `lens`.
            self.iovs[j] = libc::iovec {
                iov_base: base.wrapping_add(i * self.slot_size).cast(),
                iov_len: self.lens[i],
            };
            let h = &mut self.hdrs[j].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = self.addr_lens[i];
            h.msg_iov = &mut self.iovs[j];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[j].msg_len = 0;
        }
        let n = super::retry(|| {
            syscall!(sendmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL
            ))
        })?;
        Ok(n as usize)
    }
}

/// `SO_ATTACH_REUSEPORT_CBPF` (Linux 4.5; the asm-generic value used by x86, arm, riscv...).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

fn bpf(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// Makes the kernel pick the socket of a `SO_REUSEPORT` group by the datagram's *source IP*
/// alone (a hash of it, modulo `sockets`), instead of by the 4-tuple: every datagram of one
/// source reaches the same socket, whatever its source port. A classic BPF program attached
/// to `fd` (it applies to the whole group); the index is the socket's position in the group,
/// i.e. its order of binding. Until `sockets` have joined, an index past the end makes the
/// kernel fall back to its own hash.
pub fn steer_by_source_ip(fd: BorrowedFd<'_>, sockets: u32) -> io::Result<()> {
    use libc::{BPF_A, BPF_ABS, BPF_ALU, BPF_B, BPF_JA, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD};
    use libc::{BPF_MISC, BPF_MOD, BPF_MUL, BPF_RET, BPF_RSH, BPF_TAX, BPF_W, BPF_X, BPF_XOR};
    // Offsets from the network (IP) header; the program's own data starts at the payload.
    let net = |off: i32| (libc::SKF_NET_OFF + off) as u32;
    let prog = [
        bpf(BPF_LD | BPF_B | BPF_ABS, 0, 0, net(0)), // 0: version and IHL
        bpf(BPF_ALU | BPF_RSH | BPF_K, 0, 0, 4),     // 1: version
        bpf(BPF_JMP | BPF_JEQ | BPF_K, 2, 0, 6),     // 2: IPv6 → 5, IPv4 → 3
        bpf(BPF_LD | BPF_W | BPF_ABS, 0, 0, net(12)), // 3: IPv4 source
        bpf(BPF_JMP | BPF_JA, 0, 0, 10),             // 4: → 15
        bpf(BPF_LD | BPF_W | BPF_ABS, 0, 0, net(8)), // 5: IPv6 source, four words XORed
        bpf(BPF_MISC | BPF_TAX, 0, 0, 0),
        bpf(BPF_LD | BPF_W | BPF_ABS, 0, 0, net(12)),
        bpf(BPF_ALU | BPF_XOR | BPF_X, 0, 0, 0),
        bpf(BPF_MISC | BPF_TAX, 0, 0, 0),
        bpf(BPF_LD | BPF_W | BPF_ABS, 0, 0, net(16)),
        bpf(BPF_ALU | BPF_XOR | BPF_X, 0, 0, 0),
        bpf(BPF_MISC | BPF_TAX, 0, 0, 0),
        bpf(BPF_LD | BPF_W | BPF_ABS, 0, 0, net(20)),
        bpf(BPF_ALU | BPF_XOR | BPF_X, 0, 0, 0),
        bpf(BPF_ALU | BPF_MUL | BPF_K, 0, 0, 0x9E37_79B1), // 15: mix (Fibonacci hashing)
        bpf(BPF_ALU | BPF_RSH | BPF_K, 0, 0, 16),
        bpf(BPF_ALU | BPF_MOD | BPF_K, 0, 0, sockets.max(1)),
        bpf(BPF_RET | BPF_A, 0, 0, 0),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr().cast_mut(),
    };
    syscall!(setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        SO_ATTACH_REUSEPORT_CBPF,
        (&fprog as *const libc::sock_fprog).cast(),
        std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t
    ))?;
    Ok(())
}

/// True for send errors that mean "the socket cannot take it now" (no backpressure for UDP:
/// the datagram is dropped), as opposed to an error about that one datagram.
pub fn is_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;
    use std::time::Duration;

    #[test]
    fn receives_a_batch_and_echoes_a_subset_to_each_source() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let to = server.local_addr().unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        let mut batch = Batch::new(4, 2048);
        assert_eq!(
            batch.recv(server.as_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        a.send_to(b"first", to).unwrap();
        b.send_to(b"", to).unwrap();
        a.send_to(b"third", to).unwrap();
        let mut n = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while n < 3 && std::time::Instant::now() < deadline {
            match batch.recv(server.as_fd()) {
                Ok(k) => {
                    assert_eq!(k, 3 - n, "all queued datagrams in one call");
                    n += k;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(n, 3);
        assert_eq!(batch.payload(0), b"first");
        assert_eq!(batch.payload(1), b"");
        assert_eq!(batch.source(0), Some(a.local_addr().unwrap()));
        assert_eq!(batch.source(1), Some(b.local_addr().unwrap()));
        assert!(!batch.truncated(2));
        // Echo slots 2 and 1 only: `a` gets "third", `b` the empty datagram.
        assert_eq!(batch.send(server.as_fd(), &[2, 1]).unwrap(), 2);
        let mut buf = [0u8; 64];
        assert_eq!(a.recv_from(&mut buf).unwrap(), (5, to));
        assert_eq!(&buf[..5], b"third");
        assert_eq!(b.recv_from(&mut buf).unwrap(), (0, to));
    }

    #[test]
    fn steering_sends_each_source_ip_to_one_socket_of_the_group() {
        use socket2::{Domain, Socket, Type};
        let join = |at: SocketAddr| {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
            s.set_reuse_port(true).unwrap();
            s.set_nonblocking(true).unwrap();
            s.bind(&at.into()).unwrap();
            UdpSocket::from(s)
        };
        let first = join("127.0.0.1:0".parse().unwrap());
        let to = first.local_addr().unwrap();
        let group = [first, join(to)];
        steer_by_source_ip(group[0].as_fd(), 2).unwrap();
        // 16 source IPs (all of 127/8 is local), 4 source ports each.
        let mut sent = 0;
        for ip in 1..=16u8 {
            for _ in 0..4 {
                let c = UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, 0, ip), 0)).unwrap();
                c.send_to(&[ip], to).unwrap();
                sent += 1;
            }
        }
        let mut landed: Vec<std::collections::HashSet<u8>> = vec![Default::default(); 2];
        let mut got = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while got < sent {
            assert!(
                std::time::Instant::now() < deadline,
                "{got} of {sent} arrived"
            );
            for (k, s) in group.iter().enumerate() {
                let mut buf = [0u8; 4];
                while let Ok((1, from)) = s.recv_from(&mut buf) {
                    assert_eq!(from.ip(), std::net::Ipv4Addr::new(127, 0, 0, buf[0]));
                    landed[k].insert(buf[0]);
                    got += 1;
                }
            }
        }
        assert!(
            landed[0].is_disjoint(&landed[1]),
            "one socket per source IP: {landed:?}"
        );
        assert!(
            !landed[0].is_empty() && !landed[1].is_empty(),
            "both sockets serve some sources: {landed:?}"
        );
    }

    #[test]
    fn a_datagram_larger_than_its_slot_is_flagged_truncated() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.send_to(&[7u8; 100], server.local_addr().unwrap())
            .unwrap();
        let mut batch = Batch::new(2, 10);
        server.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match batch.recv(server.as_fd()) {
                Ok(n) => {
                    assert_eq!(n, 1);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "nothing arrived");
                    std::thread::yield_now();
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(batch.truncated(0));
        assert_eq!(batch.payload(0), &[7u8; 10]);
    }
}
