"""Bytes apart from the index: object stores, the content-addressed blob store
and envelope encryption at rest."""

from salus.storage.blobstore import BlobNotFound, BlobRef, BlobStore
from salus.storage.keys import FileKeyProvider, KeyProvider
from salus.storage.objects import FileObjectStore, ObjectStore

__all__ = [
    "BlobNotFound",
    "BlobRef",
    "BlobStore",
    "FileKeyProvider",
    "FileObjectStore",
    "KeyProvider",
    "ObjectStore",
]
