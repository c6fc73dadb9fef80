//! Bytes written in pieces, handed on a whole line at a time: what the generator's Kafka and
//! Kinesis writers share (`gen` writes through `std::io::Write`, they send one record a line).

/// Holds the part of the written bytes after the last newline.
#[derive(Default)]
pub struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    /// Appends `buf` and returns the lines it completed, each without its newline.
    pub fn complete(&mut self, buf: &[u8]) -> Lines {
        self.pending.extend_from_slice(buf);
        let block = match self.pending.iter().rposition(|b| *b == b'\n') {
            Some(end) => {
                let rest = self.pending.split_off(end + 1);
                std::mem::replace(&mut self.pending, rest)
            }
            None => Vec::new(),
        };
        Lines(block)
    }

    /// What was written after the last newline: the last line, if it had none.
    pub fn rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

/// Whole lines, each ending in a newline.
pub struct Lines(Vec<u8>);

impl Lines {
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split_inclusive(|b| *b == b'\n').map(|line| &line[..line.len() - 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_out_whole_however_the_bytes_are_cut() {
        let text = b"one\ntwo\n\nthree\nfour";
        for cut in 0..text.len() {
            let mut buffer = LineBuffer::default();
            let mut got: Vec<Vec<u8>> = Vec::new();
            for piece in [&text[..cut], &text[cut..]] {
                got.extend(buffer.complete(piece).iter().map(<[u8]>::to_vec));
            }
            assert_eq!(got, [&b"one"[..], b"two", b"", b"three"], "cut at {cut}");
            assert_eq!(buffer.rest(), b"four");
        }
    }
}
