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
}

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

export class ZipFile {
  readonly entries = new Map<string, ZipEntry>();
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
    const tailLength = Math.min(this.fileSize, 22 + 0xffff);
    if (this.fileSize < 22) throw invalid(this.path, "too small to be a zip archive");
    const tail = this.readAt(this.fileSize - tailLength, tailLength);
    let eocd = -1;
    for (let i = tailLength - 22; i >= 0; i--) {
      if (tail.readUInt32LE(i) === EOCD_SIGNATURE) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) throw invalid(this.path, "no zip end-of-directory record (truncated or not a zip archive)");
    let count = tail.readUInt16LE(eocd + 10);
    let cdSize = tail.readUInt32LE(eocd + 12);
    let cdOffset = tail.readUInt32LE(eocd + 16);
    if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
      const locatorAt = eocd - 20;
      if (locatorAt < 0 || tail.readUInt32LE(locatorAt) !== ZIP64_LOCATOR_SIGNATURE) {
        throw invalid(this.path, "zip64 archive without a zip64 locator");
      }
      const zip64At = readU64(tail, locatorAt + 8);
      const rec = this.readAt(zip64At, 56);
      if (rec.readUInt32LE(0) !== ZIP64_EOCD_SIGNATURE)
        throw invalid(this.path, "bad zip64 end-of-directory record");
      count = readU64(rec, 32);
      cdSize = readU64(rec, 40);
      cdOffset = readU64(rec, 48);
    }
    const cd = this.readAt(cdOffset, cdSize);
    let p = 0;
    for (let i = 0; i < count; i++) {
      if (p + 46 > cd.length || cd.readUInt32LE(p) !== CENTRAL_SIGNATURE) {
        throw invalid(this.path, "corrupt zip central directory");
      }
      const method = cd.readUInt16LE(p + 10);
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
      this.entries.set(name, { name, method, compressedSize, size, localHeaderOffset });
      p = extraEnd + commentLength;
    }
  }

  /** Absolute file offset of an entry's data (after its local header). */
  dataOffset(entry: ZipEntry): number {
    const known = this.dataOffsets.get(entry.name);
    if (known !== undefined) return known;
    const header = this.readAt(entry.localHeaderOffset, 30);
    if (header.readUInt32LE(0) !== LOCAL_SIGNATURE)
      throw invalid(this.path, `corrupt zip entry ${entry.name}`);
    const offset = entry.localHeaderOffset + 30 + header.readUInt16LE(26) + header.readUInt16LE(28);
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
