//! age's payload (the STREAM construction of age-encryption.org/v1), sealed in parallel.
//!
//! The plaintext is cut into 64 KiB chunks; chunk `i` is sealed with ChaCha20-Poly1305 under
//! the payload key and the nonce `i` (11 bytes, big-endian) followed by 1 for the last chunk
//! and 0 for the others; the output is each sealed chunk (ciphertext and 16-byte tag) in
//! order. The last chunk may be full; it is empty only when the whole plaintext is. Since no
//! chunk depends on another, batches of chunks go to worker threads round-robin and come back
//! through one channel per worker, so reading them back in the same rotation writes them in
//! order. A batch keeps 16 bytes free after each chunk, so chunks are sealed where they were
//! read and written out in one piece.

use std::cell::OnceCell;
use std::collections::{HashSet, VecDeque};
use std::io::{self, IoSliceMut, Read, Write};
use std::sync::mpsc;
use std::thread::Scope;

use age::secrecy::{ExposeSecret, SecretBox};
use age::x25519;
use age_core::format::{FileKey, Stanza};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use super::StreamError;

/// Plaintext bytes per chunk (age's STREAM chunk size).
pub(super) const CHUNK: usize = 64 * 1024;
/// Poly1305 tag after each chunk.
const TAG: usize = 16;
/// A chunk and its tag.
const SEALED: usize = CHUNK + TAG;
/// Chunks handed to a worker at once (512 KiB): large enough that handing over costs nothing
/// next to sealing, small enough that a few in flight per worker stay a few MiB.
const BATCH_CHUNKS: usize = 8;
/// Batches queued per worker: one being sealed, one waiting.
const DEPTH: usize = 2;
/// The HKDF label of the payload key (age-encryption.org/v1).
const PAYLOAD_KEY_LABEL: &[u8] = b"payload";
/// The payload nonce after the header (age-encryption.org/v1).
const NONCE: usize = 16;

/// The most a [`Sealer`] with `workers` threads holds: the batch being filled, a full one held
/// back, and `DEPTH` batches in flight per worker (on the caller's thread, the held batch is
/// sealed and written out before another is taken).
pub(super) fn buffer_bytes(workers: usize) -> u64 {
    let batches = 2 + workers * DEPTH;
    (batches * BATCH_CHUNKS * SEALED) as u64
}

/// The header of a new age file and the key of its payload.
pub(super) struct Payload {
    header: Vec<u8>,
    key: LessSafeKey,
}

impl Payload {
    /// Starts an age file to `recipients`: the `age` crate makes the file key, wraps it to each
    /// recipient and writes the header with its MAC and the payload nonce; the payload key is
    /// derived from the file key and that nonce as age does.
    pub(super) fn begin(recipients: &[x25519::Recipient]) -> Result<Self, StreamError> {
        let file_key = OnceCell::new();
        let keeping: Vec<KeepFileKey<'_>> = recipients
            .iter()
            .map(|recipient| KeepFileKey {
                recipient,
                file_key: &file_key,
            })
            .collect();
        let encryptor =
            age::Encryptor::with_recipients(keeping.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| StreamError::Age(e.to_string()))?;
        // The header, the nonce and the payload of an empty file: its only chunk, empty and
        // last, is 16 bytes of tag.
        let mut header = encryptor.wrap_output(Vec::new())?.finish()?;
        let format =
            || StreamError::Age("the age crate wrote a header of an unexpected form".into());
        let empty_tag = header.split_off(header.len().checked_sub(TAG).ok_or_else(format)?);
        let nonce = header
            .get(header.len().checked_sub(NONCE).ok_or_else(format)?..)
            .ok_or_else(format)?;
        let file_key: &SecretBox<[u8; 16]> = file_key.get().ok_or_else(format)?;
        let payload_key = SecretBox::new(Box::new(age_core::primitives::hkdf(
            nonce,
            PAYLOAD_KEY_LABEL,
            file_key.expose_secret(),
        )));
        let key = UnboundKey::new(&CHACHA20_POLY1305, payload_key.expose_secret())
            .map(LessSafeKey::new)
            .map_err(|_| format())?;
        // The same key and nonce must give the age crate's tag of the empty last chunk: this
        // proves the key was derived the age crate's way before any byte is sealed with it.
        // (That tag of an empty chunk is dropped here and never written.)
        let check = key
            .seal_in_place_separate_tag(chunk_nonce(0, true), Aad::empty(), &mut [])
            .map_err(|_| format())?;
        if check.as_ref() != empty_tag.as_slice() {
            return Err(StreamError::Age(
                "the payload key does not match the age crate's; refusing to encrypt".into(),
            ));
        }
        Ok(Payload { header, key })
    }

    /// The header and the payload nonce: the first bytes of the file.
    pub(super) fn header(&self) -> &[u8] {
        &self.header
    }

    /// The payload key.
    pub(super) fn key(&self) -> &LessSafeKey {
        &self.key
    }
}

/// An X25519 recipient that keeps the file key it wraps, so that the payload can be sealed
/// outside the `age` crate. Every recipient of a file wraps the same key.
struct KeepFileKey<'a> {
    recipient: &'a x25519::Recipient,
    file_key: &'a OnceCell<SecretBox<[u8; 16]>>,
}

impl age::Recipient for KeepFileKey<'_> {
    fn wrap_file_key(
        &self,
        file_key: &FileKey,
    ) -> Result<(Vec<Stanza>, HashSet<String>), age::EncryptError> {
        self.file_key
            .get_or_init(|| SecretBox::new(Box::new(*file_key.expose_secret())));
        self.recipient.wrap_file_key(file_key)
    }
}

/// The nonce of chunk `counter`: the counter in 11 big-endian bytes, then the last-chunk flag.
fn chunk_nonce(counter: u64, last: bool) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[3..11].copy_from_slice(&counter.to_be_bytes());
    nonce[11] = u8::from(last);
    Nonce::assume_unique_for_key(nonce)
}

/// Up to `BATCH_CHUNKS` consecutive chunks, each followed by room for its tag.
struct Batch {
    buf: Vec<u8>,
    /// Plaintext bytes in the batch.
    plain: usize,
    /// Counter of its first chunk.
    first: u64,
    /// Whether its last chunk ends the stream.
    last: bool,
    /// Bytes of sealed output at the start of `buf`, once sealed.
    sealed: usize,
}

impl Batch {
    fn new() -> Self {
        Batch {
            buf: vec![0; BATCH_CHUNKS * SEALED],
            plain: 0,
            first: 0,
            last: false,
            sealed: 0,
        }
    }

    /// A batch without a buffer, to stand in for one taken out.
    fn empty() -> Self {
        Batch {
            buf: Vec::new(),
            plain: 0,
            first: 0,
            last: false,
            sealed: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.plain == BATCH_CHUNKS * CHUNK
    }

    /// Where the next plaintext bytes go: the rest of the current chunk.
    fn space(&mut self) -> &mut [u8] {
        let (chunk, within) = (self.plain / CHUNK, self.plain % CHUNK);
        let start = chunk * SEALED + within;
        let end = (chunk * SEALED + CHUNK).min(self.buf.len());
        self.buf.get_mut(start..end).unwrap_or_default()
    }

    /// The rest of the current chunk and every later chunk of the batch, for one vectored read.
    fn spaces(&mut self) -> Vec<IoSliceMut<'_>> {
        let (chunk, within) = (self.plain / CHUNK, self.plain % CHUNK);
        let tail = self.buf.get_mut(chunk * SEALED..).unwrap_or_default();
        tail.chunks_mut(SEALED)
            .enumerate()
            .map(|(i, sealed)| {
                let from = if i == 0 { within } else { 0 };
                IoSliceMut::new(sealed.get_mut(from..CHUNK).unwrap_or_default())
            })
            .collect()
    }

    /// Seals every chunk in place with its tag after it. A batch that does not end the stream
    /// is full; the one that ends it has at least one chunk (an empty one for an empty stream).
    fn seal(&mut self, key: &LessSafeKey) -> io::Result<()> {
        let chunks = self.plain.div_ceil(CHUNK).max(1);
        let mut end = 0;
        for i in 0..chunks {
            let len = (self.plain - i * CHUNK).min(CHUNK);
            let last = self.last && i + 1 == chunks;
            let start = i * SEALED;
            let chunk = self
                .buf
                .get_mut(start..start + len + TAG)
                .ok_or_else(|| io::Error::other("a chunk outgrew its batch"))?;
            let (data, tag_room) = chunk.split_at_mut(len);
            let tag = key
                .seal_in_place_separate_tag(
                    chunk_nonce(self.first + i as u64, last),
                    Aad::empty(),
                    data,
                )
                .map_err(|_| io::Error::other("ChaCha20-Poly1305 refused a chunk"))?;
            tag_room.copy_from_slice(tag.as_ref());
            end = start + len + TAG;
        }
        self.sealed = end;
        Ok(())
    }
}

/// A worker thread's two ends.
struct Worker {
    jobs: mpsc::Sender<Batch>,
    done: mpsc::Receiver<io::Result<Batch>>,
}

/// Writes age's payload to `output`: plaintext comes in through [`Write`] or
/// [`Sealer::read_from`], sealed chunks go out in order.
pub(super) struct Sealer<'k, W: Write> {
    key: &'k LessSafeKey,
    output: W,
    /// The batch being filled.
    current: Batch,
    /// A full batch held back until more plaintext shows that it does not end the stream.
    held: Option<Batch>,
    /// No workers: batches are sealed on the caller's thread.
    workers: Vec<Worker>,
    /// Which worker has each batch in flight, oldest first.
    in_flight: VecDeque<usize>,
    /// Batches handed out so far (the next goes to worker `dispatched % workers`).
    dispatched: usize,
    /// Buffers to reuse.
    spare: Vec<Batch>,
    /// Plaintext bytes taken in.
    read: u64,
}

impl<'k, W: Write> Sealer<'k, W> {
    /// A sealer writing to `output`, with `workers` threads started in `scope` (none: seal on
    /// the caller's thread).
    pub(super) fn new<'scope, 'env>(
        key: &'k LessSafeKey,
        output: W,
        workers: usize,
        scope: &'scope Scope<'scope, 'env>,
    ) -> Self
    where
        'k: 'scope,
    {
        let workers = (0..workers)
            .map(|_| {
                let (jobs, inbox) = mpsc::channel::<Batch>();
                let (outbox, done) = mpsc::channel();
                scope.spawn(move || {
                    for mut batch in inbox {
                        let sealed = batch.seal(key).map(|()| batch);
                        if outbox.send(sealed).is_err() {
                            break;
                        }
                    }
                });
                Worker { jobs, done }
            })
            .collect();
        Sealer {
            key,
            output,
            current: Batch::new(),
            held: None,
            workers,
            in_flight: VecDeque::new(),
            dispatched: 0,
            spare: Vec::new(),
            read: 0,
        }
    }

    /// Reads `input` to its end into the stream; returns the bytes read.
    pub(super) fn read_from<R: Read>(&mut self, input: &mut R) -> io::Result<u64> {
        let before = self.read;
        loop {
            self.make_room();
            let n = match input.read_vectored(&mut self.current.spaces()) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.took(n)?;
        }
        Ok(self.read - before)
    }

    /// Seals and writes what is left, marking the stream's last chunk; returns the output.
    pub(super) fn finish(mut self) -> io::Result<W> {
        let mut last = match self.held.take() {
            Some(held) => held,
            None => std::mem::replace(&mut self.current, Batch::empty()),
        };
        last.last = true;
        self.dispatch(last)?;
        while !self.in_flight.is_empty() {
            self.collect_oldest()?;
        }
        Ok(self.output)
    }

    /// Makes sure the current batch has room, holding a full one back.
    fn make_room(&mut self) {
        if self.current.is_full() {
            let mut fresh = self.spare.pop().unwrap_or_else(Batch::new);
            fresh.plain = 0;
            fresh.last = false;
            fresh.first = self.current.first + BATCH_CHUNKS as u64;
            self.held = Some(std::mem::replace(&mut self.current, fresh));
        }
    }

    /// Counts `n` bytes put into the current batch: the held batch, if any, is now known not
    /// to end the stream and goes to be sealed.
    fn took(&mut self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.current.plain += n;
        self.read += n as u64;
        match self.held.take() {
            Some(held) => self.dispatch(held),
            None => Ok(()),
        }
    }

    /// Seals a batch, here or on its worker, and writes whatever is sealed and next in order.
    fn dispatch(&mut self, mut batch: Batch) -> io::Result<()> {
        if self.workers.is_empty() {
            batch.seal(self.key)?;
            return self.write_out(batch);
        }
        if self.in_flight.len() >= self.workers.len() * DEPTH {
            self.collect_oldest()?;
        }
        let worker = self.dispatched % self.workers.len();
        self.dispatched += 1;
        self.workers[worker]
            .jobs
            .send(batch)
            .map_err(|_| io::Error::other("a sealing thread stopped"))?;
        self.in_flight.push_back(worker);
        // Write out what is already sealed, so the output keeps flowing.
        while let Some(&oldest) = self.in_flight.front() {
            match self.workers[oldest].done.try_recv() {
                Ok(sealed) => {
                    self.in_flight.pop_front();
                    self.write_out(sealed?)?;
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(io::Error::other("a sealing thread stopped"));
                }
            }
        }
        Ok(())
    }

    /// Waits for the oldest batch in flight and writes it.
    fn collect_oldest(&mut self) -> io::Result<()> {
        let Some(oldest) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let sealed = self.workers[oldest]
            .done
            .recv()
            .map_err(|_| io::Error::other("a sealing thread stopped"))??;
        self.write_out(sealed)
    }

    fn write_out(&mut self, batch: Batch) -> io::Result<()> {
        self.output.write_all(&batch.buf[..batch.sealed])?;
        self.spare.push(batch);
        Ok(())
    }
}

impl<W: Write> Write for Sealer<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        self.make_room();
        let space = self.current.space();
        let n = data.len().min(space.len());
        space[..n].copy_from_slice(&data[..n]);
        self.took(n)?;
        Ok(n)
    }

    /// Chunks are sealed only when full or at the end: nothing to flush before that.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
