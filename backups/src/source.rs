//! A source whose end must be confirmed by whatever produces it (a child process, a thread
//! writing an archive): at the end of the stream the producer's own result is awaited, and a
//! failure becomes the last read's error. A failed source can never be mistaken for a complete
//! one, and so never uploaded as a backup. Dropped early, the producer is stopped.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::task::JoinHandle;

/// `reader`, complete only when `end` says so.
pub struct CheckedSource<R> {
    reader: R,
    end: JoinHandle<io::Result<()>>,
    finished: bool,
}

impl<R> CheckedSource<R> {
    /// The stream `reader`, whose producer reports through `end`.
    pub fn new(reader: R, end: JoinHandle<io::Result<()>>) -> Self {
        Self {
            reader,
            end,
            finished: false,
        }
    }
}

impl<R> Drop for CheckedSource<R> {
    fn drop(&mut self) {
        if !self.finished {
            // A child process is killed with its task (kill_on_drop); a writing thread stops at
            // its next write, as its reader is gone.
            self.end.abort();
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for CheckedSource<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.reader).poll_read(cx, buf))?;
        if buf.filled().len() > before || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // The end of the stream: complete only if the producer says so.
        let end = ready!(Pin::new(&mut self.end).poll(cx));
        self.finished = true;
        Poll::Ready(match end {
            Ok(result) => result,
            Err(e) => Err(io::Error::other(format!("the source stopped: {e}"))),
        })
    }
}
