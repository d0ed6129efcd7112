/**
 * Minimal reader for the zip archives `torch.save` writes: it parses the central directory (with
 * zip64 for archives or entries over 4 GB) and reads stored (uncompressed) entries by offset, so a
 * multi-gigabyte checkpoint is never loaded into one buffer.
 */
import fs from "node:fs";
import { RegionVqaError } from "../../common/errors.js";

export interface ZipEntry {
  name: string;
  /** 0 = stored; torch writes only stored entries. */
  method: number;
  compressedSize: number;
  size: number;
  localHeaderOffset: number;
  /** CRC-32 of the uncompressed data, as the central directory states it. */
  crc32: number;
}

/** Where the central directory is, from the end-of-central-directory record (or its zip64 form). */
export interface CentralDirectoryLocation {
  entries: number;
  size: number;
  offset: number;
}

/** Longest tail of a zip file that can hold its end-of-central-directory record (22 bytes + a comment). */
export const ZIP_TAIL_BYTES = 22 + 0xffff;
/** Size of a zip64 end-of-central-directory record (without extensible data). */
export const ZIP64_END_RECORD_BYTES = 56;
/** Size of a local file header before its name and extra field. */
export const LOCAL_HEADER_BYTES = 30;

const EOCD_SIGNATURE = 0x06054b50;
const ZIP64_LOCATOR_SIGNATURE = 0x07064b50;
const ZIP64_EOCD_SIGNATURE = 0x06064b50;
const CENTRAL_SIGNATURE = 0x02014b50;
const LOCAL_SIGNATURE = 0x04034b50;

function invalid(file: string, why: string): RegionVqaError {
  return new RegionVqaError("checkpoint_invalid", `${file}: ${why}`, { path: file });
}

function readU64(buf: Buffer, at: number): number {
  const v = buf.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError("zip64 value too large");
  return Number(v);
}

/**
 * Finds the end-of-central-directory record in `tail` (the file's last bytes, at most ZIP_TAIL_BYTES)
 * and returns where the central directory is, or, for a zip64 archive, the absolute offset of the zip64
 * record (ZIP64_END_RECORD_BYTES long) to read and pass to `parseZip64EndRecord`; undefined when `tail`
 * holds no such record (a longer tail may: the record is followed by a comment of up to 64 KiB). Used by
 * ZipFile and by the ranged downloader (src/models/range-fetch.ts), which fetches these bytes first.
 */
export function parseEndOfCentralDirectory(
  tail: Buffer,
  file: string,
): { cd: CentralDirectoryLocation } | { zip64RecordOffset: number } | undefined {
  let eocd = -1;
  for (let i = tail.length - 22; i >= 0; i--) {
    if (tail.readUInt32LE(i) === EOCD_SIGNATURE) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) return undefined;
  const entries = tail.readUInt16LE(eocd + 10);
  const size = tail.readUInt32LE(eocd + 12);
  const offset = tail.readUInt32LE(eocd + 16);
  if (entries === 0xffff || size === 0xffffffff || offset === 0xffffffff) {
    const locatorAt = eocd - 20;
    if (locatorAt < 0 || tail.readUInt32LE(locatorAt) !== ZIP64_LOCATOR_SIGNATURE) {
      throw invalid(file, "zip64 archive without a zip64 locator");
    }
    return { zip64RecordOffset: readU64(tail, locatorAt + 8) };
  }
  return { cd: { entries, size, offset } };
}

/** The central directory's location from a zip64 end-of-central-directory record. */
export function parseZip64EndRecord(rec: Buffer, file: string): CentralDirectoryLocation {
  if (rec.length < ZIP64_END_RECORD_BYTES || rec.readUInt32LE(0) !== ZIP64_EOCD_SIGNATURE) {
    throw invalid(file, "bad zip64 end-of-directory record");
  }
  return { entries: readU64(rec, 32), size: readU64(rec, 40), offset: readU64(rec, 48) };
}

/** The entries of a central directory (`cd` holds exactly its bytes). */
export function parseCentralDirectory(cd: Buffer, count: number, file: string): ZipEntry[] {
  const out: ZipEntry[] = [];
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (p + 46 > cd.length || cd.readUInt32LE(p) !== CENTRAL_SIGNATURE) {
      throw invalid(file, "corrupt zip central directory");
    }
    const method = cd.readUInt16LE(p + 10);
    const crc32 = cd.readUInt32LE(p + 16);
    let compressedSize = cd.readUInt32LE(p + 20);
    let size = cd.readUInt32LE(p + 24);
    const nameLength = cd.readUInt16LE(p + 28);
    const extraLength = cd.readUInt16LE(p + 30);
    const commentLength = cd.readUInt16LE(p + 32);
    let localHeaderOffset = cd.readUInt32LE(p + 42);
    const name = cd.toString("utf8", p + 46, p + 46 + nameLength);
    // Zip64 extended information: only the fields whose 32-bit value is 0xFFFFFFFF, in this order.
    let e = p + 46 + nameLength;
    const extraEnd = e + extraLength;
    while (e + 4 <= extraEnd) {
      const id = cd.readUInt16LE(e);
      const len = cd.readUInt16LE(e + 2);
      if (id === 0x0001) {
        let q = e + 4;
        if (size === 0xffffffff) {
          size = readU64(cd, q);
          q += 8;
        }
        if (compressedSize === 0xffffffff) {
          compressedSize = readU64(cd, q);
          q += 8;
        }
        if (localHeaderOffset === 0xffffffff) localHeaderOffset = readU64(cd, q);
      }
      e += 4 + len;
    }
    out.push({ name, method, compressedSize, size, localHeaderOffset, crc32 });
    p = extraEnd + commentLength;
  }
  return out;
}

/**
 * Where an entry's data starts, from its local header (`header` holds at least the header's first
 * LOCAL_HEADER_BYTES bytes, read at `entry.localHeaderOffset`).
 */
export function localDataOffset(entry: ZipEntry, header: Buffer, file: string): number {
  if (header.length < LOCAL_HEADER_BYTES || header.readUInt32LE(0) !== LOCAL_SIGNATURE) {
    throw invalid(file, `corrupt zip entry ${entry.name}`);
  }
  return entry.localHeaderOffset + LOCAL_HEADER_BYTES + header.readUInt16LE(26) + header.readUInt16LE(28);
}

export class ZipFile {
  readonly entries = new Map<string, ZipEntry>();
  /** Offset of the central directory (it follows the last entry's data). */
  centralDirectoryOffset = 0;
  private readonly dataOffsets = new Map<string, number>();

  private constructor(
    readonly path: string,
    private readonly fd: number,
    readonly fileSize: number,
  ) {}

  /** Open and index a zip file; throws `checkpoint_invalid` when it is not a readable zip. */
  static open(file: string): ZipFile {
    const fd = fs.openSync(file, "r");
    try {
      const zip = new ZipFile(file, fd, fs.fstatSync(fd).size);
      zip.readCentralDirectory();
      return zip;
    } catch (err) {
      fs.closeSync(fd);
      if (err instanceof RangeError) throw invalid(file, `corrupt zip archive (${err.message})`);
      throw err;
    }
  }

  close(): void {
    fs.closeSync(this.fd);
  }

  /** Read `length` bytes at absolute file position `position`, failing if the file is shorter. */
  readAt(position: number, length: number): Buffer {
    if (position + length > this.fileSize) {
      throw invalid(this.path, `file is truncated (needs byte ${position + length}, has ${this.fileSize})`);
    }
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      // readSync reads at most 2 GB per call; loop for large tensors.
      const n = fs.readSync(this.fd, buf, done, Math.min(length - done, 1 << 30), position + done);
      if (n === 0) throw invalid(this.path, "unexpected end of file");
      done += n;
    }
    return buf;
  }

  private readCentralDirectory(): void {
    if (this.fileSize < 22) throw invalid(this.path, "too small to be a zip archive");
    const tailLength = Math.min(this.fileSize, ZIP_TAIL_BYTES);
    const found = parseEndOfCentralDirectory(this.readAt(this.fileSize - tailLength, tailLength), this.path);
    if (!found) throw invalid(this.path, "no zip end-of-directory record (truncated or not a zip archive)");
    const cd =
      "cd" in found
        ? found.cd
        : parseZip64EndRecord(this.readAt(found.zip64RecordOffset, ZIP64_END_RECORD_BYTES), this.path);
    this.centralDirectoryOffset = cd.offset;
    for (const entry of parseCentralDirectory(this.readAt(cd.offset, cd.size), cd.entries, this.path)) {
      this.entries.set(entry.name, entry);
    }
  }

  /** Absolute file offset of an entry's data (after its local header). */
  dataOffset(entry: ZipEntry): number {
    const known = this.dataOffsets.get(entry.name);
    if (known !== undefined) return known;
    const offset = localDataOffset(
      entry,
      this.readAt(entry.localHeaderOffset, LOCAL_HEADER_BYTES),
      this.path,
    );
    this.dataOffsets.set(entry.name, offset);
    return offset;
  }

  /** Read `length` bytes at `offset` inside a stored entry. */
  readEntry(entry: ZipEntry, offset = 0, length = entry.size - offset): Buffer {
    if (entry.method !== 0) {
      throw invalid(
        this.path,
        `zip entry ${entry.name} is compressed (method ${entry.method}); torch.save writes stored entries`,
      );
    }
    if (offset < 0 || offset + length > entry.size) {
      throw invalid(this.path, `read past the end of zip entry ${entry.name}`);
    }
    return this.readAt(this.dataOffset(entry) + offset, length);
  }
}
