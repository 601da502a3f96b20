// The trampoline: page 0 holding the sled (sled.hpp), and the relay pages that lead from it to the
// entry stub.
//
// Contract: map_trampoline() is called with the install lock held. The page is mapped once per
// process and stays for the life of the process (rewritten sites keep calling into it even after
// the hook is detached). After set-up it is execute-only where the CPU supports it (protection
// keys), otherwise read+execute; never writable.
#pragma once

#include <cstdint>

namespace zpoline::detail {

// What the stub needs whichever mechanism is used, at the first install: its flags
// configuration, and the fault handler (fault_redirect.hpp: a thread without TLS at the stub's
// first TLS access, a site faulting while its bytes change, a call into the sled that faults).
void prepare_entry();

// Maps and fills page 0 unless already done. Throws zpoline::Error (page_zero_refused,
// page_zero_in_use) with a message naming what to change.
void map_trampoline();

bool trampoline_is_mapped() noexcept;

// Where the relay's two pages are (chosen at the first map_trampoline(); sled.hpp), 0 before.
std::uintptr_t trampoline_relay_base() noexcept;

}  // namespace zpoline::detail
