// Files: read-only memory maps, whole-file reads, and atomic writes
// (temp name + fsync + rename, so a reader never sees a half-written file).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace tinylora {

class MappedFile {
 public:
  MappedFile() = default;
  // Throws Error (exit 2) naming the path. copy_on_write: the pages may be written, each
  // write making a private copy of its page (the file never changes).
  explicit MappedFile(const std::string& path, bool copy_on_write = false);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  uint8_t* writable_data() const { return copy_on_write_ ? const_cast<uint8_t*>(data_) : nullptr; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Tells the kernel the bytes [offset, offset+len) will not be read again.
  void Release(size_t offset, size_t len) const;

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool copy_on_write_ = false;
};

bool FileExists(const std::string& path);
bool IsDirectory(const std::string& path);
std::string ReadTextFile(const std::string& path);  // throws Error (exit 2) naming the path
std::string JoinPath(const std::string& dir, const std::string& name);

// Writes `bytes` to `path` atomically: `path.tmp.PID`, fsync, rename, fsync of the directory.
void WriteFileAtomic(const std::string& path, const void* bytes, size_t size);
inline void WriteFileAtomic(const std::string& path, const std::string& text) {
  WriteFileAtomic(path, text.data(), text.size());
}

// Streams a file to a temporary name, then Commit() fsyncs and renames it into place.
// Destroyed without Commit(), the temporary file is removed.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(const std::string& path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  void Write(const void* bytes, size_t size);
  void Commit();

 private:
  std::string path_, tmp_path_;
  int fd_ = -1;
};

void MakeDirectories(const std::string& path);  // mkdir -p; throws Error naming the path
void FsyncDirectory(const std::string& path);

}  // namespace tinylora
