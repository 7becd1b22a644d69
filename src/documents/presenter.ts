/** The API's representation of documents and shares (what openapi.ts describes). */
import type { Access } from './policy.ts';
import type { DocumentRecord, ShareRecord } from './model.ts';

export const etagOf = (doc: Pick<DocumentRecord, 'version'>): string => `"v${doc.version}"`;

function summary(doc: DocumentRecord, access: Access) {
  return {
    id: doc._id,
    title: doc.title,
    tags: doc.tags,
    owner: { type: doc.owner.type, id: doc.owner.id },
    access,
    file: doc.file
      ? {
        contentType: doc.file.contentType,
        size: doc.file.size,
        filename: doc.file.filename,
        sha256: doc.file.sha256,
        uploadedAt: doc.file.uploadedAt.toISOString(),
      }
      : null,
    version: doc.version,
    createdAt: doc.createdAt.toISOString(),
    updatedAt: doc.updatedAt.toISOString(),
  };
}

/** A list item: everything but the content, which can be up to 1 MiB per document. */
export const presentSummary = summary;

export function presentDocument(doc: DocumentRecord, access: Access) {
  return { ...summary(doc, access), content: doc.content };
}

export function presentShare(share: ShareRecord) {
  return { userId: share.userId, email: share.email, role: share.role, createdAt: share.createdAt.toISOString() };
}
