// zpoline::HookChain: an immutable list of hooks (a snapshot) published through an atomic
// pointer, replaced whole by add() and remove(), and freed once no call can be inside it.
//
// A call entering the chain counts itself in a counter before it loads the snapshot, and leaves
// that counter when done. A call that holds a replaced snapshot therefore shows in its counter
// from before the replacement until it leaves: once every counter has been seen at zero after
// the replacement (each at its own moment), no call holds the old snapshot and it is freed.
// Calls that enter later hold newer snapshots and only delay this. So that counters drain while
// calls keep coming, there are two sets of them; calls enter the set `readers_set` names, and
// each replacement (and synchronize(), while it waits) switches it. Counters are striped over
// cache lines by thread, so calls on different threads do not contend. Nothing on the call path
// blocks, allocates or frees.
#include "zpoline/hook_chain.hpp"

#include <sys/syscall.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "platform/thread_local.hpp"

namespace zpoline::detail {

struct ContinuationAccess {
  static const Continuation*& next(Syscall& call) noexcept { return call.next_; }
};

namespace {

constexpr std::size_t kStripes = 8;

struct Entry {
  std::uint64_t id;
  int order;
  std::shared_ptr<Hook> hook;
};

struct Snapshot {
  std::vector<Entry> entries;
};

struct alignas(64) Stripe {
  std::atomic<long> readers{0};
};

// Calls inside a chain on this thread (any chain): synchronize() there would wait for itself.
ZPOLINE_THREAD_LOCAL unsigned chain_depth = 0;
ZPOLINE_THREAD_LOCAL unsigned thread_stripe = 0;  // 1 + the stripe of this thread; 0 until chosen
std::atomic<unsigned> next_stripe{0};

unsigned stripe_of_this_thread() noexcept {
  if (thread_stripe == 0) {
    thread_stripe = 1 + next_stripe.fetch_add(1, std::memory_order_relaxed) % kStripes;
  }
  return thread_stripe - 1;
}

// Calls after which, when they succeed, this thread never comes back to leave the chain: exit
// ends it; exit_group ends the process, whose memory a vfork child shares with its parent; execve
// replaces the memory of a process, or leaves that of a vfork child's parent (posix_spawn,
// system, popen run the chain in such a child, on the parent's counters and TLS).
bool does_not_come_back(long number) {
  return number == SYS_exit || number == SYS_exit_group || number == SYS_execve ||
         number == SYS_execveat;
}

// Passes the call on past the chain: to `outer`, the kernel or an enclosing chain. For calls that
// do not come back (above) the thread leaves its counter and the chain first (nothing of the
// snapshot is used after the call), and enters again if the call fails.
long leave_chain(Syscall& call, const Continuation* outer, std::atomic<long>& readers) {
  const Continuation*& next = ContinuationAccess::next(call);
  const Continuation* self = next;
  next = outer;
  const bool leaves = does_not_come_back(call.number());
  if (leaves) {
    readers.fetch_sub(1, std::memory_order_release);
    --chain_depth;
  }
  const long result = call.forward();
  if (leaves) {
    ++chain_depth;
    readers.fetch_add(1, std::memory_order_seq_cst);
  }
  next = self;
  return result;
}

// The rest of the chain after a hook: forward() from hook `position - 1` runs hook `position`,
// or, past the last, leaves the chain.
struct Step : Continuation {
  const Snapshot* snapshot;
  std::size_t position;
  const Continuation* outer;
  std::atomic<long>* readers;
};

long run_step(const Continuation& self, Syscall& call) {
  const Step& step = static_cast<const Step&>(self);
  if (step.position == step.snapshot->entries.size()) {
    return leave_chain(call, step.outer, *step.readers);
  }
  const Continuation*& next = ContinuationAccess::next(call);
  long result;
  {
    const Step following{{&run_step}, step.snapshot, step.position + 1, step.outer, step.readers};
    next = &following;
    result = (*step.snapshot->entries[step.position].hook)(call);
  }
  next = &self;  // forward() may be called again by the same hook
  return result;
}

}  // namespace

struct HookChainState {
  std::atomic<const Snapshot*> current{new Snapshot};
  std::atomic<unsigned> readers_set{0};
  Stripe stripes[2][kStripes];

  std::mutex writer_lock;  // guards the rest
  std::uint64_t next_id = 1;
  struct Retired {
    std::unique_ptr<const Snapshot> snapshot;
    bool seen_drained[2] = {false, false};  // each set of counters seen at zero since
  };
  std::vector<Retired> retired;

  bool drained(unsigned set) const noexcept {
    return std::all_of(std::begin(stripes[set]), std::end(stripes[set]), [](const Stripe& s) {
      return s.readers.load(std::memory_order_seq_cst) == 0;
    });
  }

  // Frees the retired snapshots no call can hold any more. Called with writer_lock held; the
  // hooks they alone referenced are destroyed here.
  void reclaim() {
    for (unsigned set = 0; set < 2; ++set) {
      if (!drained(set)) continue;
      for (Retired& r : retired) r.seen_drained[set] = true;
    }
    std::erase_if(retired, [](const Retired& r) { return r.seen_drained[0] && r.seen_drained[1]; });
  }

  // Publishes `next` in place of the current snapshot. Called with writer_lock held.
  void replace(std::unique_ptr<Snapshot> next) {
    const Snapshot* old = current.exchange(next.release(), std::memory_order_seq_cst);
    retired.push_back({std::unique_ptr<const Snapshot>(old)});
    readers_set.fetch_xor(1, std::memory_order_seq_cst);
    reclaim();
  }

  void remove(std::uint64_t id) {
    std::lock_guard lock(writer_lock);
    auto next = std::make_unique<Snapshot>(*current.load(std::memory_order_relaxed));
    std::erase_if(next->entries, [&](const Entry& entry) { return entry.id == id; });
    replace(std::move(next));
  }

  ~HookChainState() {
    // No copy of the chain is left, so no call can enter it; a call still inside (blocked in a
    // forwarded read() after its Session ended, say) keeps what it holds: leak that.
    const bool idle = drained(0) && drained(1);
    for (Retired& r : retired) {
      if (!idle) static_cast<void>(r.snapshot.release());
    }
    if (idle) delete current.load(std::memory_order_relaxed);
  }
};

}  // namespace zpoline::detail

namespace zpoline {
inline namespace ZPOLINE_ABI_NAMESPACE {

using detail::Entry;
using detail::Snapshot;

HookChain::HookChain() : state_(std::make_shared<detail::HookChainState>()) {}

HookChain::Handle HookChain::add(Hook hook, int order) {
  if (!hook) {
    throw Error(ErrorCode::invalid_option,
                "zpoline: HookChain::add() needs a hook; an empty std::function was given.");
  }
  auto shared = std::make_shared<Hook>(std::move(hook));
  std::lock_guard lock(state_->writer_lock);
  const std::uint64_t id = state_->next_id++;
  auto next = std::make_unique<Snapshot>(*state_->current.load(std::memory_order_relaxed));
  const auto after = std::find_if(next->entries.begin(), next->entries.end(),
                                  [&](const Entry& entry) { return entry.order > order; });
  next->entries.insert(after, Entry{id, order, std::move(shared)});
  state_->replace(std::move(next));
  return Handle(state_, id);
}

std::size_t HookChain::size() const {
  std::lock_guard lock(state_->writer_lock);
  return state_->current.load(std::memory_order_relaxed)->entries.size();
}

void HookChain::synchronize() const {
  if (detail::chain_depth != 0) {
    throw Error(ErrorCode::invalid_option,
                "zpoline: HookChain::synchronize() was called from inside a hook of a chain; it "
                "would wait for that call itself. Call it outside the hooks.");
  }
  for (;;) {
    {
      std::lock_guard lock(state_->writer_lock);
      state_->reclaim();
      if (state_->retired.empty()) return;
      // Calls entering from now on count in the other set, so that this one can drain even
      // while calls keep coming.
      state_->readers_set.fetch_xor(1, std::memory_order_seq_cst);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

long HookChain::operator()(Syscall& call) const {
  detail::HookChainState& state = *state_;
  const unsigned set = state.readers_set.load(std::memory_order_relaxed);
  detail::Stripe& stripe = state.stripes[set][detail::stripe_of_this_thread()];
  stripe.readers.fetch_add(1, std::memory_order_seq_cst);
  const Snapshot* snapshot = state.current.load(std::memory_order_seq_cst);
  ++detail::chain_depth;
  const detail::Continuation*& next = detail::ContinuationAccess::next(call);
  const detail::Continuation* outer = next;
  long result;
  if (snapshot->entries.empty()) {
    result = detail::leave_chain(call, outer, stripe.readers);
  } else {
    const detail::Step following{{&detail::run_step}, snapshot, 1, outer, &stripe.readers};
    next = &following;
    result = (*snapshot->entries.front().hook)(call);
    next = outer;
  }
  --detail::chain_depth;
  stripe.readers.fetch_sub(1, std::memory_order_release);
  return result;
}

HookChain::Handle::Handle(Handle&& other) noexcept
    : state_(std::move(other.state_)), id_(std::exchange(other.id_, 0)) {}

HookChain::Handle& HookChain::Handle::operator=(Handle&& other) noexcept {
  if (this != &other) {
    remove();
    state_ = std::move(other.state_);
    id_ = std::exchange(other.id_, 0);
  }
  return *this;
}

HookChain::Handle::~Handle() {
  remove();
}

void HookChain::Handle::remove() noexcept {
  if (id_ == 0) return;
  state_->remove(id_);  // only std::bad_alloc could leave it, which ends the program here
  id_ = 0;
  state_.reset();
}

}  // namespace ZPOLINE_ABI_NAMESPACE
}  // namespace zpoline
