// The scan cache (Options::scan_cache_directory, rewriting/scan_cache.hpp): a second install
// from the cache rewrites exactly what a scan rewrites; entries that no longer fit (damaged,
// pointing at bytes that are no `syscall`, made for another file) and directories others may
// write to are not used. Each install runs in a child of its own.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <link.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "support.hpp"
#include "zpoline/zpoline.hpp"

namespace {

namespace fs = std::filesystem;

// A fresh directory under the build's temporary directory (removed at exit).
struct TemporaryDirectory {
  TemporaryDirectory() {
    char pattern[] = "/tmp/zpoline-scan-cache-XXXXXX";
    REQUIRE(mkdtemp(pattern) != nullptr);
    path = pattern;
  }
  ~TemporaryDirectory() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
  std::string path;
};

// Where libc's `syscall` instructions became `call *%rax` (or a near jump): offsets in its
// executable segment where the file holds 0f 05 and memory does not.
int find_libc(dl_phdr_info* info, std::size_t, void* data) {
  if (info->dlpi_name == nullptr || std::strstr(info->dlpi_name, "/libc.so.6") == nullptr) return 0;
  auto* out = static_cast<std::vector<std::uint64_t>*>(data);
  const int fd = open(info->dlpi_name, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 1;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& segment = info->dlpi_phdr[i];
    if (segment.p_type != PT_LOAD || !(segment.p_flags & PF_X)) continue;
    std::vector<unsigned char> file(segment.p_filesz);
    if (pread(fd, file.data(), file.size(), static_cast<off_t>(segment.p_offset)) !=
        static_cast<ssize_t>(file.size())) {
      break;
    }
    const auto* memory = reinterpret_cast<const unsigned char*>(info->dlpi_addr + segment.p_vaddr);
    for (std::size_t at = 0; at + 1 < file.size(); ++at) {
      if (file[at] == 0x0f && file[at + 1] == 0x05 && memory[at] != 0x0f) out->push_back(at);
    }
  }
  close(fd);
  return 1;
}

// What one install did, as text (one line per image, then libc's rewritten offsets), made in a
// child so that every install is the first of its process. `exit_code` is the child's.
struct Outcome {
  std::string report;
  int exit_code = -1;
};

Outcome install_in_child(const std::function<zpoline::Options()>& make_options) {
  int pipe_fds[2];
  REQUIRE(pipe(pipe_fds) == 0);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    close(pipe_fds[0]);
    std::ostringstream report;
    int code = 0;
    try {
      auto session =
          zpoline::install([](zpoline::Syscall& call) { return call.forward(); }, make_options());
      for (const zpoline::ImageStats& image : session.stats().images) {
        report << image.path << " cached=" << image.scan_from_cache
               << " rewritten=" << image.sites_rewritten << " prefixed=" << image.skipped_prefixed
               << " red_zone=" << image.skipped_red_zone
               << " undecodable=" << image.skipped_undecodable << "\n";
      }
      std::vector<std::uint64_t> offsets;
      dl_iterate_phdr(find_libc, &offsets);
      report << "libc sites";
      for (const std::uint64_t offset : offsets) report << ' ' << offset;
      report << "\n";
    } catch (const zpoline::Error& error) {
      report << "error " << static_cast<int>(error.code()) << ' ' << error.what() << "\n";
      code = error.code() == zpoline::ErrorCode::page_zero_refused ? 77 : 3;
    }
    const std::string text = report.str();
    static_cast<void>(write(pipe_fds[1], text.data(), text.size()));
    _exit(code);
  }
  close(pipe_fds[1]);
  Outcome outcome;
  char buffer[4096];
  for (ssize_t n; (n = read(pipe_fds[0], buffer, sizeof buffer)) > 0;)
    outcome.report.append(buffer, n);
  close(pipe_fds[0]);
  int status = 0;
  waitpid(child, &status, 0);
  outcome.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (outcome.exit_code == 77) {
    std::fprintf(stderr, "SKIP: this machine does not allow page 0\n");
    std::_Exit(77);
  }
  return outcome;
}

zpoline::Options with_cache(const std::string& directory) {
  zpoline::Options options;
  options.scan_cache_directory = directory;
  options.use_environment = false;
  if (zpoline_test::near_mechanism_wanted()) options.mechanism = zpoline::Mechanism::near;
  return options;
}

// The report without the " cached=N" fields.
std::string without_cached(std::string report) {
  for (std::size_t at; (at = report.find(" cached=")) != std::string::npos;) {
    report.erase(at, std::strlen(" cached=") + 1);
  }
  return report;
}

std::size_t count_of(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = 0; (at = text.find(what, at)) != std::string::npos; at += what.size()) ++n;
  return n;
}

std::vector<fs::path> entries_in(const std::string& directory) {
  std::vector<fs::path> entries;
  for (const auto& entry : fs::directory_iterator(directory)) entries.push_back(entry.path());
  return entries;
}

}  // namespace

TEST_CASE("second_install_from_the_cache_rewrites_the_same_sites") {
  TemporaryDirectory temporary;
  const std::string directory = temporary.path + "/cache/nested";
  const Outcome scanned = install_in_child([&] { return with_cache(directory); });
  REQUIRE(scanned.exit_code == 0);
  CHECK(count_of(scanned.report, " cached=1") == 0);
  CHECK(scanned.report.find("libc sites ") != std::string::npos);
  const Outcome cached = install_in_child([&] { return with_cache(directory); });
  REQUIRE(cached.exit_code == 0);
  INFO("scanned:\n" << scanned.report << "cached:\n" << cached.report);
  CHECK(without_cached(cached.report) == without_cached(scanned.report));
  if (zpoline_test::near_mechanism_wanted()) {
    // The near mechanism needs each image's function table anyway: no cache.
    CHECK(count_of(cached.report, " cached=1") == 0);
    CHECK(!fs::exists(directory));
    return;
  }
  // Every image but the special ones has its entry, and libc's sites are hundreds.
  CHECK(count_of(cached.report, " cached=0") == 0);
  CHECK(count_of(cached.report, " cached=1") >= 4);
  CHECK(count_of(cached.report, "libc sites ") == 1);
  CHECK(std::count(cached.report.begin(), cached.report.end(), ' ') > 400);
  struct stat status {};
  REQUIRE(stat(directory.c_str(), &status) == 0);
  CHECK((status.st_mode & 0777) == 0700);
  CHECK(entries_in(directory).size() >= 4);
}

TEST_CASE("entries_that_no_longer_fit_are_not_used") {
  if (zpoline_test::near_mechanism_wanted()) {
    std::fprintf(stderr, "SKIP: the scan cache serves the page-0 mechanism only\n");
    std::_Exit(77);
  }
  TemporaryDirectory temporary;
  const std::string directory = temporary.path + "/cache";
  const Outcome scanned = install_in_child([&] { return with_cache(directory); });
  REQUIRE(scanned.exit_code == 0);
  // libc's entry: the largest.
  fs::path libc_entry;
  for (const fs::path& entry : entries_in(directory)) {
    if (libc_entry.empty() || fs::file_size(entry) > fs::file_size(libc_entry)) libc_entry = entry;
  }
  REQUIRE(!libc_entry.empty());
  std::string original;
  {
    std::ifstream in(libc_entry, std::ios::binary);
    original.assign(std::istreambuf_iterator<char>(in), {});
  }
  REQUIRE(original.size() > 1000);
  const auto write_entry = [&](const std::string& bytes) {
    std::ofstream out(libc_entry, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  };
  // An entry ends with the FNV-1a hash of what comes before it: `body` with a correct one.
  const auto with_checksum = [](std::string body) {
    std::uint64_t hash = 0xcbf29ce484222325ull;
    for (const unsigned char c : body) {
      hash ^= c;
      hash *= 0x100000001b3ull;
    }
    body.append(reinterpret_cast<const char*>(&hash), sizeof hash);
    return body;
  };
  const std::string body = original.substr(0, original.size() - 8);
  REQUIRE(with_checksum(body) == original);
  const auto libc_line = [](const std::string& report) {
    const std::size_t at = report.find("/libc.so.6 ");
    return report.substr(at, report.find('\n', at) - at);
  };

  // The last site's offset moved by one byte: not a `syscall` there. The whole entry is dropped
  // and libc scanned: the same sites, and the entry written anew.
  std::string moved = body;
  const std::size_t last_site = moved.size() - (8 + 8 + 1);
  std::uint64_t offset = 0;
  std::memcpy(&offset, moved.data() + last_site, sizeof offset);
  ++offset;
  std::memcpy(moved.data() + last_site, &offset, sizeof offset);
  write_entry(with_checksum(moved));
  Outcome outcome = install_in_child([&] { return with_cache(directory); });
  REQUIRE(outcome.exit_code == 0);
  CHECK(libc_line(outcome.report).find("cached=0") != std::string::npos);
  CHECK(without_cached(outcome.report) == without_cached(scanned.report));

  // Truncated, a byte more, one byte changed (each caught by the checksum), then another file's
  // key with a correct checksum: each ignored.
  std::string flipped = original;
  flipped[flipped.size() / 2] ^= 1;
  for (const std::string& damaged :
       {original.substr(0, original.size() / 2), original + "x", flipped,
        with_checksum(std::string(body).replace(40, 3, "zzz"))}) {
    write_entry(damaged);
    outcome = install_in_child([&] { return with_cache(directory); });
    REQUIRE(outcome.exit_code == 0);
    CHECK(libc_line(outcome.report).find("cached=0") != std::string::npos);
    CHECK(without_cached(outcome.report) == without_cached(scanned.report));
  }
  // Written anew by the last scan, and used again.
  outcome = install_in_child([&] { return with_cache(directory); });
  CHECK(libc_line(outcome.report).find("cached=1") != std::string::npos);
  CHECK(without_cached(outcome.report) == without_cached(scanned.report));
}

TEST_CASE("directories_others_may_write_to_are_not_used") {
  TemporaryDirectory temporary;
  const std::string open_to_all = temporary.path + "/open";
  REQUIRE(mkdir(open_to_all.c_str(), 0777) == 0);
  REQUIRE(chmod(open_to_all.c_str(), 0777) == 0);
  Outcome outcome = install_in_child([&] { return with_cache(open_to_all); });
  REQUIRE(outcome.exit_code == 0);
  CHECK(entries_in(open_to_all).empty());
  outcome = install_in_child([&] { return with_cache(open_to_all); });
  CHECK(count_of(outcome.report, " cached=1") == 0);
  // Another user's directory (made here as root, given to nobody).
  if (geteuid() == 0) {
    const std::string others = temporary.path + "/others";
    REQUIRE(mkdir(others.c_str(), 0700) == 0);
    REQUIRE(chown(others.c_str(), 65534, 65534) == 0);
    outcome = install_in_child([&] { return with_cache(others); });
    REQUIRE(outcome.exit_code == 0);
    CHECK(entries_in(others).empty());
  }
}

TEST_CASE("cache_directory_must_be_absolute") {
  Outcome outcome = install_in_child([] { return with_cache("relative/cache"); });
  CHECK(outcome.exit_code == 3);
  CHECK(outcome.report.find("not an absolute path") != std::string::npos);
  setenv("ZPOLINE_SCAN_CACHE", "relative", 1);
  outcome = install_in_child([] {
    zpoline::Options options;
    options.use_environment = true;
    return options;
  });
  CHECK(outcome.exit_code == 3);
  CHECK(outcome.report.find("ZPOLINE_SCAN_CACHE=\"relative\"") != std::string::npos);
  // "off" turns a cache the options ask for off.
  TemporaryDirectory temporary;
  setenv("ZPOLINE_SCAN_CACHE", "off", 1);
  outcome = install_in_child([&] {
    zpoline::Options options = with_cache(temporary.path + "/cache");
    options.use_environment = true;
    return options;
  });
  CHECK(outcome.exit_code == 0);
  CHECK(!fs::exists(temporary.path + "/cache"));
  unsetenv("ZPOLINE_SCAN_CACHE");
}

// An install after another in the same process finds libc rewritten already: it must not write
// what it sees (no sites) for later processes, which would then leave libc's calls unhooked.
TEST_CASE("patched_code_writes_no_entry") {
  if (zpoline_test::near_mechanism_wanted()) {
    std::fprintf(stderr, "SKIP: the scan cache serves the page-0 mechanism only\n");
    std::_Exit(77);
  }
  TemporaryDirectory temporary;
  const std::string directory = temporary.path + "/cache";
  const Outcome reinstalled = install_in_child([&] {
    zpoline::Options first;
    first.use_environment = false;
    // The first Session's sites stay rewritten after it ends (restore_on_detach is off).
    {
      auto session = zpoline::install([](zpoline::Syscall& call) { return call.forward(); }, first);
    }
    return with_cache(directory);
  });
  REQUIRE(reinstalled.exit_code == 0);
  const Outcome fresh = install_in_child([&] { return with_cache(directory); });
  REQUIRE(fresh.exit_code == 0);
  const std::size_t at = fresh.report.find("/libc.so.6 ");
  REQUIRE(at != std::string::npos);
  const std::string libc = fresh.report.substr(at, fresh.report.find('\n', at) - at);
  CHECK(libc.find("cached=0") != std::string::npos);  // no entry was written for it
  CHECK(libc.find("rewritten=0") == std::string::npos);
  CHECK(std::count(fresh.report.begin(), fresh.report.end(), ' ') > 400);
}

// A symbolic link anywhere in the path (the last component with a trailing slash, or a parent)
// makes the directory unusable: nothing is created, read or written through it.
TEST_CASE("symbolic_links_in_the_path_are_refused") {
  TemporaryDirectory temporary;
  const std::string target = temporary.path + "/target";
  REQUIRE(mkdir(target.c_str(), 0700) == 0);
  const std::string link = temporary.path + "/link";
  REQUIRE(symlink(target.c_str(), link.c_str()) == 0);
  for (const std::string& path : {link, link + "/", link + "/cache", link + "//cache/",
                                  temporary.path + "/./target", temporary.path + "/x/../target"}) {
    CAPTURE(path);
    const Outcome outcome = install_in_child([&] { return with_cache(path); });
    REQUIRE(outcome.exit_code == 0);
    CHECK(count_of(outcome.report, " cached=1") == 0);
    CHECK(entries_in(target).empty());
  }
  CHECK(!fs::exists(temporary.path + "/x"));
}

// A FIFO at an entry's name (put there by this user, or left by a crash of something else) must
// not block the program's start: the entry is opened without blocking and is not a regular file.
TEST_CASE("a_fifo_at_an_entry_does_not_block") {
  if (zpoline_test::near_mechanism_wanted()) {
    std::fprintf(stderr, "SKIP: the scan cache serves the page-0 mechanism only\n");
    std::_Exit(77);
  }
  TemporaryDirectory temporary;
  const std::string directory = temporary.path + "/cache";
  REQUIRE(install_in_child([&] { return with_cache(directory); }).exit_code == 0);
  std::size_t fifos = 0;
  for (const fs::path& entry : entries_in(directory)) {
    fs::remove(entry);
    REQUIRE(mkfifo(entry.c_str(), 0600) == 0);
    ++fifos;
  }
  REQUIRE(fifos >= 4);
  const Outcome outcome = install_in_child([&] {
    alarm(20);  // a blocked open would end the child with SIGALRM
    return with_cache(directory);
  });
  CHECK(outcome.exit_code == 0);
  CHECK(count_of(outcome.report, " cached=1") == 0);
}
