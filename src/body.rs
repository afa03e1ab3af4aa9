//! The response body: the inner service's, or the short one the layer answers with itself.

use std::{
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::fingerprint::{BodyHash, Fingerprint};

pin_project! {
    /// Response body of [`Conditional`](crate::Conditional): the inner body, or the layer's own
    /// (empty for `304 Not Modified`, a one-line explanation for `412 Precondition Failed`).
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        // The layer's own text, or an inner body the layer read ahead to its end.
        Own { data: Option<Bytes>, trailers: Option<Box<HeaderMap>> },
        // An inner body fingerprinted as it streams: what was read ahead, then the rest; at its
        // end, `learn` gets the hash.
        Hashing {
            prefix: Option<Bytes>,
            rest: Pin<Box<B>>,
            hash: BodyHash,
            learn: Option<Learn>,
        },
    }
}

/// What a fingerprinted body does with its hash at its end.
pub(crate) type Learn = Box<dyn FnOnce(Fingerprint) + Send + Sync>;

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn own(data: &'static str) -> Self {
        Self::read_ahead(Bytes::from_static(data.as_bytes()), None)
    }

    /// An inner body read to its end before the response was sent.
    pub(crate) fn read_ahead(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        let data = (!data.is_empty()).then_some(data);
        let trailers = trailers.map(Box::new);
        Self {
            kind: Kind::Own { data, trailers },
        }
    }

    /// An inner body of which `prefix` was read ahead (and hashed into `hash`); the rest is
    /// hashed as it streams, and `learn` gets the fingerprint at its end.
    pub(crate) fn hashing(prefix: Bytes, rest: Pin<Box<B>>, hash: BodyHash, learn: Learn) -> Self {
        Self {
            kind: Kind::Hashing {
                prefix: (!prefix.is_empty()).then_some(prefix),
                rest,
                hash,
                learn: Some(learn),
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Own { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(|trailers| Frame::trailers(*trailers)))
                    .map(Ok),
            ),
            KindProj::Hashing {
                prefix,
                rest,
                hash,
                learn,
            } => {
                // The prefix was hashed when it was read ahead.
                let (frame, from_prefix) = match prefix.take() {
                    Some(prefix) => (Some(Ok(Frame::data(prefix))), true),
                    None => (ready!(rest.as_mut().poll_frame(cx)), false),
                };
                match &frame {
                    Some(Ok(frame)) if !from_prefix => {
                        if let Some(data) = frame.data_ref() {
                            hash.update(data);
                        }
                    }
                    // Cut short: what it would have hashed is unknown, so nothing is learned.
                    Some(Err(_)) => *learn = None,
                    _ => {}
                }
                // Learned as soon as the rest is known to be over: a server that knows the
                // length may never poll for the end.
                if frame.is_none() || rest.is_end_stream() {
                    if let Some(learn) = learn.take() {
                        learn(hash.finish());
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Own { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Hashing {
                prefix,
                rest,
                learn,
                ..
            } => prefix.is_none() && learn.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Own { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Hashing { prefix, rest, .. } => {
                let prefix = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + prefix);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + prefix);
                }
                hint
            }
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Inner { .. } => "Inner",
            Kind::Own { .. } => "Own",
            Kind::Hashing { .. } => "Hashing",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}
