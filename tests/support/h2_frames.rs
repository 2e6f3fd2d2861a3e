//! Raw HTTP/2 frames for hostile-client tests: kaname must meet bytes no
//! well-behaved client library would send.

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One frame: 24-bit length, type, flags, stream id, payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET <path>` over http with `:authority: 127.0.0.1` (static
/// `:method GET` and `:scheme http`, literal `:path` and `:authority`
/// without indexing).
pub fn get_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x04, path.len() as u8];
    b.extend_from_slice(path.as_bytes());
    b.extend_from_slice(&[0x01, 9]);
    b.extend_from_slice(b"127.0.0.1");
    b
}

/// Reads one frame: its type, flags, stream and payload.
pub async fn read_frame(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await?;
    Ok((head[3], head[4], stream, payload))
}

/// The first byte of each field representation of an HPACK block (RFC 7541
/// §6), walked without decoding a name or value: enough to tell how each
/// was sent (`0x80` indexed, `0x40` indexed from now on, `0x10` never
/// indexed, `0x00` not indexed). A table size update is left out.
pub fn hpack_representations(block: &[u8]) -> Vec<u8> {
    // An integer with an N-bit prefix (§5.1); returns it and the next offset.
    fn int(b: &[u8], at: usize, bits: u32) -> (usize, usize) {
        let mask = (1usize << bits) - 1;
        let mut v = usize::from(b[at]) & mask;
        let mut i = at + 1;
        if v == mask {
            let mut shift = 0;
            loop {
                let next = b[i];
                i += 1;
                v += usize::from(next & 0x7f) << shift;
                shift += 7;
                if next & 0x80 == 0 {
                    break;
                }
            }
        }
        (v, i)
    }
    // A string literal (§5.2): its length and bytes skipped.
    fn string(b: &[u8], at: usize) -> usize {
        let (len, i) = int(b, at, 7);
        i + len
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < block.len() {
        let first = block[i];
        if first & 0x80 != 0 {
            i = int(block, i, 7).1;
            out.push(0x80);
            continue;
        }
        if first & 0xe0 == 0x20 {
            i = int(block, i, 5).1;
            continue;
        }
        let (kind, bits) = if first & 0x40 != 0 {
            (0x40, 6)
        } else {
            (first & 0x10, 4)
        };
        let (name, next) = int(block, i, bits);
        i = if name == 0 { string(block, next) } else { next };
        i = string(block, i);
        out.push(kind);
    }
    out
}
