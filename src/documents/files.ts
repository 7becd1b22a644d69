/**
 * The documents' files, in GridFS (bucket document_files). Each stored file names its document
 * in metadata.documentId, so deleting a document finds every file stored for it, including one an
 * upload committed while the delete ran.
 */
import { createHash } from 'node:crypto';
import { PassThrough, Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import mongoose, { type Collection, type Connection, type Types } from 'mongoose';
import type { FileRecord } from './model.ts';
import { ApiProblem } from './problem.ts';

const BUCKET = 'document_files';

export interface FileUpload {
  body: Readable;
  contentType: string;
  filename: string;
}

export function tooLarge(maxBytes: number): ApiProblem {
  return new ApiProblem('payload-too-large', 413, `The file is larger than the limit of ${maxBytes} bytes.`);
}

/**
 * The request body behind a stream that pipeline() may destroy (at the size limit) without
 * destroying the request itself, so the connection survives long enough to answer 413.
 */
function detachable(source: Readable): Readable {
  const pass = new PassThrough();
  // The client may have gone while the document was read: its 'close' has then already fired.
  if (source.destroyed || source.readableAborted) {
    pass.destroy(new Error('the upload was interrupted'));
    return pass;
  }
  source.once('error', (error) => pass.destroy(error));
  source.once('close', () => {
    if (!source.readableEnded) pass.destroy(new Error('the upload was interrupted'));
  });
  return source.pipe(pass);
}

export class DocumentFiles {
  private readonly bucket: InstanceType<typeof mongoose.mongo.GridFSBucket>;
  private readonly files: Collection;

  constructor(connection: Connection) {
    this.bucket = new mongoose.mongo.GridFSBucket(connection.db!, { bucketName: BUCKET });
    this.files = connection.collection(`${BUCKET}.files`);
  }

  async ensureIndexes(): Promise<void> {
    await this.files.createIndex({ 'metadata.documentId': 1 });
  }

  /** Streams the upload in, hashing and counting as it goes, and stopping (413) past maxBytes. */
  async store(documentId: string, upload: FileUpload, maxBytes: number): Promise<FileRecord> {
    // Bytes already gone (Node drops an answered request's body) would make a shorter file.
    if (upload.body.readableDidRead) throw new ApiProblem('bad-request', 400, 'The upload was cut short before it was stored.');
    const hash = createHash('sha256');
    let size = 0;
    const meter = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        size += chunk.length;
        if (size > maxBytes) return callback(tooLarge(maxBytes));
        hash.update(chunk);
        callback(null, chunk);
      },
    });
    const stream = this.bucket.openUploadStream(upload.filename, { metadata: { documentId, contentType: upload.contentType } });
    try {
      await pipeline(detachable(upload.body), meter, stream);
    } catch (error) {
      await stream.abort().catch(() => undefined);
      throw error;
    }
    return {
      gridFsId: stream.id,
      contentType: upload.contentType,
      size,
      filename: upload.filename,
      sha256: hash.digest('base64'),
      uploadedAt: new Date(),
    };
  }

  /** Deletes one file; a failure leaves it behind (it is only unreachable space). */
  async discard(id: Types.ObjectId): Promise<void> {
    await this.bucket.delete(id).catch(() => undefined);
  }

  /** Deletes every file of the document, or throws while one is left. */
  async removeAll(documentId: string): Promise<void> {
    const files = await this.bucket.find({ 'metadata.documentId': documentId }, { projection: { _id: 1 } }).toArray();
    await Promise.allSettled(files.map((file) => this.bucket.delete(file._id)));
    // One that another finisher removed meanwhile is no failure; one still there is.
    const left = await this.files.countDocuments({ 'metadata.documentId': documentId });
    if (left) throw new Error(`${left} files of deleted document ${documentId} could not be removed`);
  }

  /** The file's bytes, or undefined when it is gone (a replacing upload or a delete removed it). */
  async open(file: FileRecord): Promise<Readable | undefined> {
    if (!(await this.files.countDocuments({ _id: file.gridFsId }, { limit: 1 }))) return undefined;
    return this.bucket.openDownloadStream(file.gridFsId);
  }
}
