/* The entry stub: the code between the sled and the C++ dispatcher, and every raw `syscall`
 * instruction of the library. The rewriter never touches [zpoline_detail_code_begin,
 * zpoline_detail_code_end).
 *
 * On entry from a rewritten site (`call *%rax`): rax = syscall number, arguments in rdi, rsi, rdx,
 * r10, r8, r9, (%rsp) = the address after the site. The 8 bytes of the return address are the
 * only memory the call has touched; everything down to 128 bytes below the caller's rsp may be
 * the caller's red zone, so the stub steps over it before using the stack.
 *
 * On return, every register except rax holds its value from before the call, like a real
 * `syscall`, except rcx = return address and r11 = RFLAGS, which is also what `syscall` leaves.
 * The layout pushed here is zpoline::detail::RegisterFrame (dispatch/frame.hpp). */

#define FRAME_RAX 96
#define FRAME_RFLAGS 104
#define FRAME_RETURN 240
#define FRAME_SIZE 248                          /* up to and including the return address */
#define RED_ZONE 128
#define PROT_EXEC 4
#define RFLAGS_DF 0x400
#define RFLAGS_AC 0x40000
/* ThreadState (dispatch/frame.hpp) */
#define STATE_BYPASS_DEPTH 0
#define STATE_HOOK_FRAME 8
#define STATE_SUD_ARMED 16
#define STATE_FORWARDING 17
#define STATE_VFORK_DEPTH 20
#define STATE_VFORK_RETURNS 64
#define VFORK_RETURN_ADDRESS 0
#define VFORK_SAVED_STATE 8
#define VFORK_SAVED_HOOK_FRAME 16
#define VFORK_RESULT 24
#define VFORK_MAX 16
#define STATE_HOOK_CANARY_ADDRESS 24
#define STATE_HOOK_CANARY 32
#define STATE_HOOK_ENTRIES 40
#define STATE_IN_HOOK 48
#define STATE_VFORK_FRAME 56
/* HookCall (dispatch/frame.hpp) */
#define HOOK_CALL_SIZE 64
#define HOOK_CALL_REGS 0
#define HOOK_CALL_XSAVE 8
#define HOOK_CALL_SYSCALL 16                    /* a zpoline::Syscall: frame_, next_ */
#define HOOK_CALL_CONTEXT 32
#define HOOK_CALL_CANARY 40
/* InstalledHook (dispatch.cpp) */
#define INSTALLED_HOOK_ENTRY 0
#define INSTALLED_HOOK_CONTEXT 8
/* SiteRegistry's table (rewriting/site_registry.cpp) */
#define SITE_TABLE_CAPACITY 0
#define SITE_TABLE_SLOTS 16
#define SITE_HASH_MULTIPLIER 0x9e3779b97f4a7c15

/* Vector state in the "registers" modes (platform/cpu.hpp): the registers compiled code may
 * clobber, plus MXCSR, at `base`. On CPUs where XRSTOR is slow this is far cheaper. */
        .macro SAVE_YMM base
        stmxcsr 512(\base)                      /* first: after the stores it waits for them */
        vmovdqu %ymm0, 0(\base)
        vmovdqu %ymm1, 32(\base)
        vmovdqu %ymm2, 64(\base)
        vmovdqu %ymm3, 96(\base)
        vmovdqu %ymm4, 128(\base)
        vmovdqu %ymm5, 160(\base)
        vmovdqu %ymm6, 192(\base)
        vmovdqu %ymm7, 224(\base)
        vmovdqu %ymm8, 256(\base)
        vmovdqu %ymm9, 288(\base)
        vmovdqu %ymm10, 320(\base)
        vmovdqu %ymm11, 352(\base)
        vmovdqu %ymm12, 384(\base)
        vmovdqu %ymm13, 416(\base)
        vmovdqu %ymm14, 448(\base)
        vmovdqu %ymm15, 480(\base)
        .endm
        .macro RESTORE_YMM base
        vmovdqu 0(\base), %ymm0
        vmovdqu 32(\base), %ymm1
        vmovdqu 64(\base), %ymm2
        vmovdqu 96(\base), %ymm3
        vmovdqu 128(\base), %ymm4
        vmovdqu 160(\base), %ymm5
        vmovdqu 192(\base), %ymm6
        vmovdqu 224(\base), %ymm7
        vmovdqu 256(\base), %ymm8
        vmovdqu 288(\base), %ymm9
        vmovdqu 320(\base), %ymm10
        vmovdqu 352(\base), %ymm11
        vmovdqu 384(\base), %ymm12
        vmovdqu 416(\base), %ymm13
        vmovdqu 448(\base), %ymm14
        vmovdqu 480(\base), %ymm15
        .endm
        .macro SAVE_XMM base
        stmxcsr 512(\base)
        movdqu %xmm0, 0(\base)
        movdqu %xmm1, 32(\base)
        movdqu %xmm2, 64(\base)
        movdqu %xmm3, 96(\base)
        movdqu %xmm4, 128(\base)
        movdqu %xmm5, 160(\base)
        movdqu %xmm6, 192(\base)
        movdqu %xmm7, 224(\base)
        movdqu %xmm8, 256(\base)
        movdqu %xmm9, 288(\base)
        movdqu %xmm10, 320(\base)
        movdqu %xmm11, 352(\base)
        movdqu %xmm12, 384(\base)
        movdqu %xmm13, 416(\base)
        movdqu %xmm14, 448(\base)
        movdqu %xmm15, 480(\base)
        .endm
        .macro RESTORE_XMM base
        movdqu 0(\base), %xmm0
        movdqu 32(\base), %xmm1
        movdqu 64(\base), %xmm2
        movdqu 96(\base), %xmm3
        movdqu 128(\base), %xmm4
        movdqu 160(\base), %xmm5
        movdqu 192(\base), %xmm6
        movdqu 224(\base), %xmm7
        movdqu 256(\base), %xmm8
        movdqu 288(\base), %xmm9
        movdqu 320(\base), %xmm10
        movdqu 352(\base), %xmm11
        movdqu 384(\base), %xmm12
        movdqu 416(\base), %xmm13
        movdqu 448(\base), %xmm14
        movdqu 480(\base), %xmm15
        .endm
        /* LDMXCSR is slow (serialising): only when the hook changed MXCSR. Clobbers ecx. The
         * stub's paths read MXCSR and the x87 control word (READ_CONTROL_WORDS) before their
         * vector loads and compare after them (read=0): a load right behind STMXCSR or FNSTCW
         * waits for the store (microcoded stores are not forwarded at once). */
        .macro READ_CONTROL_WORDS base
        stmxcsr 516(\base)
        fnstcw 526(\base)
        .endm
        .macro RESTORE_MXCSR base, read=1
        .if \read
        stmxcsr 516(\base)
        .endif
        mov 516(\base), %ecx
        cmp 512(\base), %ecx
        je 9f
        ldmxcsr 512(\base)
9:
        .endm

/* The x87 state in the two register modes (the XSAVE modes save it with the rest). The ABI has
 * the x87 stack empty at every call, but a syscall instruction need not be at a call (inline
 * assembly inside x87 code), and a hook's long double arithmetic changes the status word (its
 * sticky exception flags, which fetestexcept reads) and may change the control word. So: the
 * status and control words at 520 and 522 (FNSTSW/FNSTCW: ~5 ns together); where TOP says the
 * stack holds values, all of the x87 state (FNSAVE at 576, 108 bytes, which also gives the hook
 * the initial x87 state); on the way back FRSTOR for those, and otherwise, only if the hook
 * changed either word, the two words and an empty stack through FNSTENV/FLDENV. A full stack of eight values (TOP wraps
 * to 0) or MMX state at the syscall is not told from an empty stack: README, "Limits". */
        .macro SAVE_X87 base                    /* clobbers eax */
        fnstsw %ax                              /* the register form: tested at once */
        fnstcw 522(\base)
        mov %ax, 520(\base)
        test $0x3800, %ax                       /* TOP */
        jz .Lx87_saved_\@
        fnsave 576(\base)
.Lx87_saved_\@:
        .endm
        /* Clobbers eax. */
        .macro RESTORE_X87 base, read=1
        testw $0x3800, 520(\base)
        jz .Lx87_words_\@
        fnclex                                  /* FRSTOR waits: an exception the hook left */
        frstor 576(\base)                      /* pending and unmasked would fire here */
        jmp .Lx87_restored_\@
.Lx87_words_\@:
        fnstsw %ax                              /* the register form: nothing to reload. A */
        cmp 520(\base), %ax                    /* load spanning two 2-byte stores (as the */
        jne .Lx87_changed_\@                   /* words were compared before) is not */
        .if \read                              /* forwarded: it waits for both to retire */
        fnstcw 526(\base)
        .endif
        movzwl 526(\base), %eax
        cmp 522(\base), %ax
        je .Lx87_restored_\@
.Lx87_changed_\@:
        fnstenv 576(\base)                     /* the hook's pointers stay */
        mov 520(\base), %eax
        mov %ax, 580(\base)                    /* the status word */
        shr $16, %eax
        mov %ax, 576(\base)                    /* the control word */
        movw $0xffff, 584(\base)               /* the tags: the stack was empty */
        fldenv 576(\base)
.Lx87_restored_\@:
        .endm

/* The ymm mode's moves, with two base registers (lo = area + 128, hi = area + 384) so that every
 * displacement fits in a byte: about half the code of (%rsp)-relative moves. */
        .macro YMM_STORES lo, hi
        vmovdqu %ymm0, -128(\lo)
        vmovdqu %ymm1, -96(\lo)
        vmovdqu %ymm2, -64(\lo)
        vmovdqu %ymm3, -32(\lo)
        vmovdqu %ymm4, 0(\lo)
        vmovdqu %ymm5, 32(\lo)
        vmovdqu %ymm6, 64(\lo)
        vmovdqu %ymm7, 96(\lo)
        vmovdqu %ymm8, -128(\hi)
        vmovdqu %ymm9, -96(\hi)
        vmovdqu %ymm10, -64(\hi)
        vmovdqu %ymm11, -32(\hi)
        vmovdqu %ymm12, 0(\hi)
        vmovdqu %ymm13, 32(\hi)
        vmovdqu %ymm14, 64(\hi)
        vmovdqu %ymm15, 96(\hi)
        .endm
        .macro YMM_LOADS lo, hi
        vmovdqu -128(\lo), %ymm0
        vmovdqu -96(\lo), %ymm1
        vmovdqu -64(\lo), %ymm2
        vmovdqu -32(\lo), %ymm3
        vmovdqu 0(\lo), %ymm4
        vmovdqu 32(\lo), %ymm5
        vmovdqu 64(\lo), %ymm6
        vmovdqu 96(\lo), %ymm7
        vmovdqu -128(\hi), %ymm8
        vmovdqu -96(\hi), %ymm9
        vmovdqu -64(\hi), %ymm10
        vmovdqu -32(\hi), %ymm11
        vmovdqu 0(\hi), %ymm12
        vmovdqu 32(\hi), %ymm13
        vmovdqu 64(\hi), %ymm14
        vmovdqu 96(\hi), %ymm15
        .endm
        .macro XMM_LOADS lo, hi                 /* legacy SSE: the upper halves stay as they are */
        movdqu -128(\lo), %xmm0
        movdqu -96(\lo), %xmm1
        movdqu -64(\lo), %xmm2
        movdqu -32(\lo), %xmm3
        movdqu 0(\lo), %xmm4
        movdqu 32(\lo), %xmm5
        movdqu 64(\lo), %xmm6
        movdqu 96(\lo), %xmm7
        movdqu -128(\hi), %xmm8
        movdqu -96(\hi), %xmm9
        movdqu -64(\hi), %xmm10
        movdqu -32(\hi), %xmm11
        movdqu 0(\hi), %xmm12
        movdqu 32(\hi), %xmm13
        movdqu 64(\hi), %xmm14
        movdqu 96(\hi), %xmm15
        .endm

/* PKRU in the register modes where the kernel has turned protection keys on
 * (zpoline_detail_save_pkru): a hook may change it (pkey_set), as it may change MXCSR. Saved with
 * RDPKRU at \where; put back with WRPKRU (which waits for earlier stores) only if it changed.
 * Clobber eax, ecx and edx, so \where must not use them. */
        .macro SAVE_PKRU where
        cmpb $0, zpoline_detail_save_pkru(%rip)
        je .Lpkru_saved_\@
        xor %ecx, %ecx
        rdpkru
        mov %eax, \where
.Lpkru_saved_\@:
        .endm
        .macro RESTORE_PKRU where
        cmpb $0, zpoline_detail_save_pkru(%rip)
        je .Lpkru_restored_\@
        xor %ecx, %ecx
        rdpkru
        cmp \where, %eax
        je .Lpkru_restored_\@
        mov \where, %eax
        xor %edx, %edx
        wrpkru
.Lpkru_restored_\@:
        .endm

/* The zmm mode (AVX-512; platform/cpu.hpp): zmm0-31 at 64 * i from (%rsp), k0-k7 at 2048, and
 * the MXCSR/x87/PKRU block of the other register modes from 1600 (= kZmmControlBase: its fields
 * at their usual offsets 512.. from there). EVEX moves with a scaled 8-bit displacement: one
 * base register reaches all of it.
 *
 * The cost is in the stores (docs/PERFORMANCE.md, "AVX-512"): on Zen 4 a 512-bit store takes two
 * store-queue entries, and 32 of them fill the queue (27 ns; 256-bit ones: 15 ns). Compiled code
 * writes zmm16-31 through their low 256 bits (glibc's EVEX string functions), which zeroes the
 * rest, and leaves bits 256-511 of zmm0-15 zero unless it computes with zmm itself. So: zmm30
 * and zmm31 are saved whole first, which frees them to collect the OR of zmm0-15 and of zmm16-31
 * without touching any register not yet saved; each group is then stored with 256-bit moves
 * where its bits 256-511 are all zero, whole otherwise. r13 (also kept at ZMM_WIDTHS for the
 * clone path) = vptestmq's masks of those ORs: bits 2-3 = bits 128-255 of some zmm0-15, bits
 * 4-7 = bits 256-511 of some zmm0-15, bits 12-15 = bits 256-511 of some zmm16-31. The way back
 * loads at the width saved, and with every upper bit of zmm0-15 zero it leaves them clean with
 * vzeroupper and 128-bit loads, as the ymm mode does. Clobbers rax, rcx, rdx, k1, k2 and the
 * vector registers. */
#define ZMM_CONTROL 1600
#define ZMM_WIDTHS (ZMM_CONTROL+532)
        .macro SAVE_ZMM
        stmxcsr ZMM_CONTROL+512(%rsp)           /* first: after the stores it waits for them */
        .irp r, 0,1,2,3,4,5,6,7
        kmovq %k\r, 2048+\r*8(%rsp)
        .endr
        vmovdqu64 %zmm30, 30*64(%rsp)
        vmovdqu64 %zmm31, 31*64(%rsp)
        vpternlogq $0xfe, %zmm17, %zmm16, %zmm31  /* zmm31 |= zmm16 | zmm17 */
        vpternlogq $0xfe, %zmm19, %zmm18, %zmm31
        vpternlogq $0xfe, %zmm21, %zmm20, %zmm31
        vpternlogq $0xfe, %zmm23, %zmm22, %zmm31
        vpternlogq $0xfe, %zmm25, %zmm24, %zmm31
        vpternlogq $0xfe, %zmm27, %zmm26, %zmm31
        vpternlogq $0xfe, %zmm29, %zmm28, %zmm31
        vporq %zmm30, %zmm31, %zmm31
        vporq %zmm1, %zmm0, %zmm30
        vpternlogq $0xfe, %zmm3, %zmm2, %zmm30
        vpternlogq $0xfe, %zmm5, %zmm4, %zmm30
        vpternlogq $0xfe, %zmm7, %zmm6, %zmm30
        vpternlogq $0xfe, %zmm9, %zmm8, %zmm30
        vpternlogq $0xfe, %zmm11, %zmm10, %zmm30
        vpternlogq $0xfe, %zmm13, %zmm12, %zmm30
        vpternlogq $0xfe, %zmm15, %zmm14, %zmm30
        vptestmq %zmm30, %zmm30, %k1
        vptestmq %zmm31, %zmm31, %k2
        kunpckbw %k1, %k2, %k1                  /* k1 = k2 << 8 | k1 */
        kmovw %k1, %r13d
        and $0xf0fc, %r13d
        mov %r13d, ZMM_WIDTHS(%rsp)
        test $0xf0, %r13d
        jnz .Lzmm_low_whole_\@
        .irp r, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
        vmovdqu64 %ymm\r, \r*64(%rsp)
        .endr
        jmp .Lzmm_low_saved_\@
.Lzmm_low_whole_\@:
        .irp r, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
        vmovdqu64 %zmm\r, \r*64(%rsp)
        .endr
.Lzmm_low_saved_\@:
        test $0xf000, %r13d
        jnz .Lzmm_high_whole_\@
        .irp r, 16,17,18,19,20,21,22,23,24,25,26,27,28,29
        vmovdqu64 %ymm\r, \r*64(%rsp)
        .endr
        jmp .Lzmm_high_saved_\@
.Lzmm_high_whole_\@:
        .irp r, 16,17,18,19,20,21,22,23,24,25,26,27,28,29
        vmovdqu64 %zmm\r, \r*64(%rsp)
        .endr
.Lzmm_high_saved_\@:
        lea ZMM_CONTROL(%rsp), %rdx
        SAVE_X87 %rdx
        SAVE_PKRU ZMM_CONTROL+528(%rsp)
        vzeroupper                              /* for the SSE C++ code */
        .endm
        /* Clobbers rax, rcx and rdx. */
        .macro RESTORE_ZMM
        lea ZMM_CONTROL(%rsp), %rdx
        READ_CONTROL_WORDS %rdx
        test $0xf000, %r13d
        jnz .Lzmm_high_whole_\@
        .irp r, 16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        vmovdqu64 \r*64(%rsp), %ymm\r
        .endr
        jmp .Lzmm_high_loaded_\@
.Lzmm_high_whole_\@:
        .irp r, 16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        vmovdqu64 \r*64(%rsp), %zmm\r
        .endr
.Lzmm_high_loaded_\@:
        .irp r, 0,1,2,3,4,5,6,7
        kmovq 2048+\r*8(%rsp), %k\r
        .endr
        test $0xfc, %r13d
        jnz .Lzmm_upper_\@
        vzeroupper                              /* every upper bit was zero: clean, as found */
        .irp r, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
        vmovdqu64 \r*64(%rsp), %xmm\r
        .endr
        jmp .Lzmm_loaded_\@
.Lzmm_upper_\@:
        test $0xf0, %r13d
        jnz .Lzmm_low_whole_\@
        .irp r, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
        vmovdqu64 \r*64(%rsp), %ymm\r
        .endr
        jmp .Lzmm_loaded_\@
.Lzmm_low_whole_\@:
        .irp r, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
        vmovdqu64 \r*64(%rsp), %zmm\r
        .endr
.Lzmm_loaded_\@:
        lea ZMM_CONTROL(%rsp), %rdx
        RESTORE_MXCSR %rdx, 0
        RESTORE_X87 %rdx, 0
        RESTORE_PKRU ZMM_CONTROL+528(%rsp)
        .endm

/* Saves the vector state in the mode platform/cpu.cpp chose at (%rsp): 64-byte aligned,
 * zpoline_detail_xsave_size bytes. The ymm mode inline; the others at \other (one
 * SAVE_OTHER_VECTOR_STATE \other, \done per use, out of the hot path), which continues at \done.
 * In the ymm mode also: r13 = whether any upper half is nonzero (vorps over the saved
 * registers: free beside the stores), and vzeroupper for the SSE C++ code. Clobbers rax, rcx,
 * rdx and the vector registers. */
        .macro SAVE_VECTOR_STATE other, done
        cmpb $3, zpoline_detail_xsave_mode(%rip)
        jne \other
        stmxcsr 512(%rsp)                       /* first: after the stores it waits for them */
        lea 128(%rsp), %rax
        lea 384(%rsp), %rdx
        YMM_STORES %rax, %rdx
        SAVE_X87 %rsp
        SAVE_PKRU 528(%rsp)
        vorps %ymm1, %ymm0, %ymm0
        vorps %ymm3, %ymm2, %ymm2
        vorps %ymm5, %ymm4, %ymm4
        vorps %ymm7, %ymm6, %ymm6
        vorps %ymm9, %ymm8, %ymm8
        vorps %ymm11, %ymm10, %ymm10
        vorps %ymm13, %ymm12, %ymm12
        vorps %ymm15, %ymm14, %ymm14
        vorps %ymm2, %ymm0, %ymm0
        vorps %ymm6, %ymm4, %ymm4
        vorps %ymm10, %ymm8, %ymm8
        vorps %ymm14, %ymm12, %ymm12
        vorps %ymm4, %ymm0, %ymm0
        vorps %ymm12, %ymm8, %ymm8
        vorps %ymm8, %ymm0, %ymm0
        vextractf128 $1, %ymm0, %xmm0
        xor %r13d, %r13d
        vptest %xmm0, %xmm0
        setnz %r13b
        vzeroupper
\done:
        .endm
        .macro SAVE_OTHER_VECTOR_STATE other, done
\other:
        cmpb $5, zpoline_detail_xsave_mode(%rip)
        jne .Lnot_zmm_\@
        SAVE_ZMM
        jmp \done
.Lnot_zmm_\@:
        cmpb $4, zpoline_detail_xsave_mode(%rip)
        jne 2f
        SAVE_XMM %rsp
        SAVE_X87 %rsp
        SAVE_PKRU 528(%rsp)
        jmp \done
2:      xor %ecx, %ecx                          /* the XSAVE header: XSAVE leaves the bits of */
        mov %rcx, 512(%rsp)                     /* XSTATE_BV outside the mask as they were, and */
        mov %rcx, 520(%rsp)                     /* XRSTOR faults on any of them, or on bytes */
        mov %rcx, 528(%rsp)                     /* 8..63 not 0 */
        mov %rcx, 536(%rsp)
        mov %rcx, 544(%rsp)
        mov %rcx, 552(%rsp)
        mov %rcx, 560(%rsp)
        mov %rcx, 568(%rsp)
        mov zpoline_detail_xsave_mask(%rip), %eax
        mov zpoline_detail_xsave_mask+4(%rip), %edx
        cmpb $2, zpoline_detail_xsave_mode(%rip)
        jne 3f
        xsavec (%rsp)                           /* compacted, skips components in init state */
        jmp \done
3:      cmpb $1, zpoline_detail_xsave_mode(%rip)
        jne 4f
        xsave (%rsp)
        jmp \done
4:      fxsave (%rsp)
        jmp \done
        .endm

/* Restores what SAVE_VECTOR_STATE saved at (%rsp), with r13 as it left it; the other modes at
 * \other (RESTORE_OTHER_VECTOR_STATE), continuing at \done. With every upper half zero:
 * vzeroupper and 128-bit loads, which leave the upper state clean (256-bit loads would leave it
 * dirty, and the application's next SSE instruction would pay a state transition). Clobbers rax,
 * rcx and rdx. */
        .macro RESTORE_VECTOR_STATE other, done
        cmpb $3, zpoline_detail_xsave_mode(%rip)
        jne \other
        READ_CONTROL_WORDS %rsp
        lea 128(%rsp), %rax
        lea 384(%rsp), %rdx
        test %r13d, %r13d
        jnz 1f
        vzeroupper
        XMM_LOADS %rax, %rdx
        jmp 2f
1:      YMM_LOADS %rax, %rdx
2:      RESTORE_MXCSR %rsp, 0
        RESTORE_X87 %rsp, 0
        RESTORE_PKRU 528(%rsp)
\done:
        .endm
        .macro RESTORE_OTHER_VECTOR_STATE other, done
\other:
        cmpb $5, zpoline_detail_xsave_mode(%rip)
        jne .Lnot_zmm_\@
        RESTORE_ZMM
        jmp \done
.Lnot_zmm_\@:
        cmpb $4, zpoline_detail_xsave_mode(%rip)
        jne 5f
        READ_CONTROL_WORDS %rsp
        RESTORE_XMM %rsp
        RESTORE_MXCSR %rsp, 0
        RESTORE_X87 %rsp, 0
        RESTORE_PKRU 528(%rsp)
        jmp \done
5:      mov zpoline_detail_xsave_mask(%rip), %eax
        mov zpoline_detail_xsave_mask+4(%rip), %edx
        cmpb $0, zpoline_detail_xsave_mode(%rip)
        je 6f
        xrstor (%rsp)
        jmp \done
6:      fxrstor (%rsp)
        jmp \done
        .endm

        .text
        .globl zpoline_detail_code_begin
        .hidden zpoline_detail_code_begin
zpoline_detail_code_begin:

/* The entry stub. Three things decide its cost (docs/PERFORMANCE.md, "Where the time goes"):
 *
 * 1. Returns after a system call. On the machine measured (Zen 3 guest whose kernel reports
 *    spec_rstack_overflow "Safe RET" and RSB filling), every `ret` whose `call` came before a
 *    system call mispredicts, the first by ~40 ns, later ones by ~8 ns. Native code has one such
 *    `ret` (its wrapper's); a hooked call would add the stub's, the dispatcher's, the hook's,
 *    forward()'s and the raw syscall's. So the stub calls the hook itself, forward() reaches the kernel
 *    through tail calls and zpoline_detail_forward_syscall, which returns with `pop; jmp`, and
 *    the stub returns to the site the same way (an indirect jump the branch predictor learns
 *    per site history, and rcx = return address is what `syscall` leaves anyway). A
 *    pass-through hook that ends in `return call.forward();` then adds no stale `ret` at all.
 *    Calls made after the system call (none on the fast path) return normally.
 * 2. RFLAGS. popfq costs ~20 cycles. Where TF, DF and AC are clear, as they nearly always are,
 *    the flags the application can see (CF, PF, AF, ZF, SF, OF) are put back with sahf and one
 *    add, and r11 gets the saved RFLAGS as `syscall` leaves it. DF and AC are cleared for the
 *    C++ code (its ABI wants DF clear; AC would make unaligned accesses fault) and restored
 *    with popfq, like TF, the rare case. zpoline_detail_popf_flags holds the bits that need
 *    popfq (every bit on a CPU without LAHF/SAHF in 64-bit mode).
 * 3. Vector state (SAVE_VECTOR_STATE, RESTORE_VECTOR_STATE above). In the ymm mode: STMXCSR
 *    first (after the stores it waits for them: ~10 ns), 16 ymm stores, vzeroupper; on the
 *    way back 16 loads, and MXCSR reloaded only if it changed. With
 *    Options::general_registers_only the stub saves nothing: a hook built for general registers
 *    leaves the vector registers alone, and where forward() runs the library's C++ code (clone,
 *    mmap, ...) it saves them itself (zpoline_detail_forward_saving_vectors).
 *
 * Registers of the full path: rbx = RegisterFrame, r12 = HookCall, r13 = whether any ymm upper
 * half was nonzero, r14 = the vector save area (0: none saved), r15 = the TLS offset of
 * ThreadState. All survive the calls. */

        .globl zpoline_detail_entry
        .hidden zpoline_detail_entry
        .type zpoline_detail_entry, @function
        .p2align 6
zpoline_detail_entry:
        .cfi_startproc
        /* An exception leaving the hook reaches this frame: report and abort (dispatch.cpp). */
        .cfi_personality 0x1b, zpoline_detail_stub_personality
        lea -RED_ZONE(%rsp), %rsp               /* step over the caller's red zone */
        .cfi_adjust_cfa_offset RED_ZONE
        pushfq                                  /* from here on flags may change */
        .cfi_adjust_cfa_offset 8
        mov RED_ZONE+8(%rsp), %rcx              /* rcx, r11: free, `syscall` clobbers them */
        /* From a site the rewriter made, not an ordinary `call *%rax` with a NULL or small
         * function pointer in rax? Look the site up in the registry (site_registry.cpp): open
         * addressing, slot = ((site * K) >> 20) & (capacity - 1), 0 marks an empty slot. The
         * site's bytes are not what decides: a site restored to `syscall` (restore_on_detach)
         * after a thread ran its `call *%rax` stays registered, and that thread is served. */
        push %rdx
        .cfi_adjust_cfa_offset 8
        push %rax
        .cfi_adjust_cfa_offset 8
        lea -2(%rcx), %rcx                      /* the site */
        mov zpoline_detail_site_table(%rip), %r11
        test %r11, %r11
        jz .Lnot_registered
        movabs $SITE_HASH_MULTIPLIER, %rax
        imul %rcx, %rax
        shr $20, %rax
        mov SITE_TABLE_CAPACITY(%r11), %rdx
        dec %rdx                                /* rdx: index mask */
2:      and %rdx, %rax                          /* the same table for the whole probe: */
        cmp %rcx, SITE_TABLE_SLOTS(%r11,%rax,8) /* a grown table hashes differently */
        je .Lsite_registered
        cmpq $0, SITE_TABLE_SLOTS(%r11,%rax,8)
        je .Lnot_registered
        inc %rax
        jmp 2b
.Lsite_registered:
        pop %rax
        .cfi_adjust_cfa_offset -8
        pop %rdx
        .cfi_adjust_cfa_offset -8
        cmp $15, %rax                           /* rt_sigreturn: run it on the signal frame */
        je .Lsigreturn
        mov zpoline_detail_thread_state@gottpoff(%rip), %r11
        /* The first access to this thread's TLS. A thread whose TLS base is 0 (a raw clone with
         * CLONE_SETTLS and no TLS) faults here: the SIGSEGV handler (fault_redirect.cpp) resumes
         * it at zpoline_detail_no_tls. No cost for every other thread. */
        .globl zpoline_detail_tls_probe
        .hidden zpoline_detail_tls_probe
zpoline_detail_tls_probe:
        cmpl $0, %fs:STATE_BYPASS_DEPTH(%r11)   /* ScopedBypass on this thread */
        jne .Lbypass
        mov %fs:STATE_HOOK_FRAME(%r11), %rcx    /* is the hook running on this thread? */
        test %rcx, %rcx
        jz 1f
        cmp %rcx, %rsp                          /* yes: above its frame, the dispatcher */
        jae .Lfull                              /* decides; below it, this is the hook's own */
        cmpb $0, %fs:STATE_FORWARDING(%r11)     /* syscall, unless the hook waits in forward() */
        jne .Lfull                              /* (then a signal handler runs: dispatcher) */
        mov %fs:STATE_HOOK_CANARY_ADDRESS(%r11), %rcx  /* and if the dispatcher's frame */
        mov (%rcx), %rcx                        /* is still intact (else the hook was left by */
        cmp %fs:STATE_HOOK_CANARY(%r11), %rcx   /* a siglongjmp: the dispatcher resets) */
        je .Lbypass
        jmp .Lfull
1:      cmpb $0, zpoline_detail_hook_live(%rip)
        je .Lnot_live

.Lfull:                                         /* save everything, run the hook */
        push %rax
        .cfi_adjust_cfa_offset 8
        push %rbx
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %rbx, 0
        push %rbp
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %rbp, 0
        push %r12
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %r12, 0
        push %r13
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %r13, 0
        push %r14
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %r14, 0
        push %r15
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %r15, 0
        push %rdi
        .cfi_adjust_cfa_offset 8
        push %rsi
        .cfi_adjust_cfa_offset 8
        push %rdx
        .cfi_adjust_cfa_offset 8
        push %r10
        .cfi_adjust_cfa_offset 8
        push %r8
        .cfi_adjust_cfa_offset 8
        push %r9
        .cfi_adjust_cfa_offset 8
        mov %rsp, %rbx                          /* rbx: the RegisterFrame, kept across calls */
        .cfi_def_cfa_register %rbx              /* CFA = rbx + FRAME_SIZE down to the pops */
        mov %r11, %r15                          /* every way here loaded it into r11 */
        testl $(RFLAGS_DF | RFLAGS_AC), FRAME_RFLAGS(%rbx)
        jnz .Lclear_df_ac                       /* the C++ ABI wants DF clear; AC would fault */
.Lflags_clear:
        and $-64, %rsp                          /* vector save areas are 64-byte aligned */
        lea -HOOK_CALL_SIZE(%rsp), %r12         /* r12: the HookCall */
        mov %r12, %rsp
        sub zpoline_detail_xsave_size(%rip), %rsp
        xor %r14d, %r14d                        /* r14: the vector save area, 0 if none */
        cmpb $0, zpoline_detail_general_registers_only(%rip)
        jne .Lfast_path                         /* forward() saves it if it runs C++ code */
.Lsave_vectors:
        SAVE_VECTOR_STATE .Lsave_other_vectors, .Lvectors_saved
        mov %rsp, %r14
.Lfast_path:                                    /* the common case; else the dispatcher decides */
        mov %fs:STATE_BYPASS_DEPTH(%r15), %rcx  /* bypass depth (and the zero word after it): */
        or %fs:STATE_HOOK_FRAME(%r15), %rcx     /* a bypassed clone or vfork; hook frame: above */
        jnz .Ldispatch                          /* a running hook's frame */
        mov %fs:STATE_IN_HOOK(%r15), %rcx       /* rcx: this thread's in_hook flag; null before */
        test %rcx, %rcx                         /* its first hooked call registers it */
        jz .Ldispatch
        mov %rbx, HOOK_CALL_REGS(%r12)          /* the SyscallFrame */
        mov %r14, HOOK_CALL_XSAVE(%r12)
        mov %r12, HOOK_CALL_SYSCALL(%r12)       /* the Syscall: that frame, no continuation */
        movq $0, HOOK_CALL_SYSCALL+8(%r12)
        mov %fs:STATE_HOOK_ENTRIES(%r15), %rdx  /* the canary: ++entries ^ frame */
        inc %rdx
        mov %rdx, %fs:STATE_HOOK_ENTRIES(%r15)
        xor %rbx, %rdx
        mov %rdx, HOOK_CALL_CANARY(%r12)
        mov %rdx, %fs:STATE_HOOK_CANARY(%r15)
        lea HOOK_CALL_CANARY(%r12), %rdx
        mov %rdx, %fs:STATE_HOOK_CANARY_ADDRESS(%r15)
        mov %r12, %fs:STATE_HOOK_FRAME(%r15)    /* syscalls from below here are the hook's own */
        movl $1, (%rcx)                         /* in_hook, then check the hook is still live: */
        incq 8(%rcx)                            /* HookActivity::calls_through_sites */
        cmpb $0, zpoline_detail_membarrier_registered(%rip) /* retract_hook's membarrier orders */
        jne 1f                                  /* the two; without it, a full fence here */
        lock orq $0, (%rsp)
1:      mov zpoline_detail_current_hook(%rip), %rax
        test %rax, %rax
        jz .Lhook_retracted
        cmpb $0, zpoline_detail_hook_live(%rip)
        je .Lhook_retracted
        mov INSTALLED_HOOK_CONTEXT(%rax), %rsi
        lea HOOK_CALL_SYSCALL(%r12), %rdi
        call *INSTALLED_HOOK_ENTRY(%rax)        /* the hook */
        mov %fs:STATE_IN_HOOK(%r15), %rcx
        movl $0, (%rcx)
        movq $0, %fs:STATE_HOOK_FRAME(%r15)
        cmp %rbx, %fs:STATE_VFORK_FRAME(%r15)   /* vfork of this frame: the stub makes the */
        cmove FRAME_RAX(%rbx), %rax             /* call below */
.Lresult:
        mov %rax, FRAME_RAX(%rbx)               /* the result, or the number for a vfork */
        test %r14, %r14
        jz .Lvectors_restored
        RESTORE_VECTOR_STATE .Lrestore_other_vectors, .Lvectors_restored
        cmp %rbx, %fs:STATE_VFORK_FRAME(%r15)
        je .Lrestore_for_application_stack
        mov %rbx, %rsp
        .cfi_def_cfa_register %rsp
        pop %r9
        .cfi_adjust_cfa_offset -8
        pop %r8
        .cfi_adjust_cfa_offset -8
        pop %r10
        .cfi_adjust_cfa_offset -8
        pop %rdx
        .cfi_adjust_cfa_offset -8
        pop %rsi
        .cfi_adjust_cfa_offset -8
        pop %rdi
        .cfi_adjust_cfa_offset -8
        pop %r15
        .cfi_adjust_cfa_offset -8
        .cfi_restore %r15
        pop %r14
        .cfi_adjust_cfa_offset -8
        .cfi_restore %r14
        pop %r13
        .cfi_adjust_cfa_offset -8
        .cfi_restore %r13
        pop %r12
        .cfi_adjust_cfa_offset -8
        .cfi_restore %r12
        pop %rbp
        .cfi_adjust_cfa_offset -8
        .cfi_restore %rbp
        pop %rbx
        .cfi_adjust_cfa_offset -8
        .cfi_restore %rbx
        mov 8(%rsp), %r11                       /* r11 = RFLAGS, as `syscall` leaves it */
        test zpoline_detail_popf_flags(%rip), %r11d
        jnz .Lpop_rax_return_popf
        mov %r11d, %eax                         /* rax is popped below: flags as in .Lreturn */
        shl $8, %eax
        bt $11, %r11d
        mov $0x7f, %al
        adc $0, %al
        sahf
        pop %rax
        .cfi_adjust_cfa_offset -8
        lea 8+RED_ZONE(%rsp), %rsp
        .cfi_adjust_cfa_offset -(8+RED_ZONE)
        pop %rcx
        .cfi_adjust_cfa_offset -8
        .cfi_register %rip, %rcx
        jmp *%rcx

.Lreturn:                                       /* rax = result, (%rsp) = saved RFLAGS */
        .cfi_def_cfa_offset 8+RED_ZONE+8
        .cfi_offset %rip, -8
        mov (%rsp), %r11                        /* r11 = RFLAGS, as `syscall` leaves it */
        test zpoline_detail_popf_flags(%rip), %r11d
        jnz .Lreturn_popf
        push %rax
        .cfi_adjust_cfa_offset 8
        mov %r11d, %eax
        shl $8, %eax                            /* ah: SF, ZF, AF, PF, CF as they were */
        bt $11, %r11d                           /* CF = OF as it was; */
        mov $0x7f, %al
        adc $0, %al                             /* OF = 1 only for 0x7f + 1 */
        sahf                                    /* no instruction below changes the flags */
        pop %rax
        .cfi_adjust_cfa_offset -8
        lea 8+RED_ZONE(%rsp), %rsp
        .cfi_adjust_cfa_offset -(8+RED_ZONE)
        pop %rcx                                /* rcx = return address, as `syscall` leaves it */
        .cfi_adjust_cfa_offset -8
        .cfi_register %rip, %rcx
        jmp *%rcx                               /* not `ret`: see the top */

.Lpop_rax_return_popf:
        .cfi_def_cfa_offset 8+RED_ZONE+8+8
        .cfi_offset %rip, -8
        pop %rax
        .cfi_adjust_cfa_offset -8
.Lreturn_popf:                                  /* TF, DF or AC set: all flags exactly */
        popfq
        .cfi_adjust_cfa_offset -8
        lea RED_ZONE(%rsp), %rsp
        .cfi_adjust_cfa_offset -RED_ZONE
        pop %rcx
        .cfi_adjust_cfa_offset -8
        .cfi_register %rip, %rcx
        jmp *%rcx

        /* Out of line, in the full path's frame (CFA = rbx + FRAME_SIZE). */
.Lrestore_for_application_stack:                /* vfork-like: restore, then make the call */
        .cfi_def_cfa %rbx, FRAME_SIZE
        .cfi_offset %rip, -8
        .cfi_offset %rbx, -FRAME_SIZE+88
        .cfi_offset %rbp, -FRAME_SIZE+80
        .cfi_offset %r12, -FRAME_SIZE+72
        .cfi_offset %r13, -FRAME_SIZE+64
        .cfi_offset %r14, -FRAME_SIZE+56
        .cfi_offset %r15, -FRAME_SIZE+48
        mov %r15, %r11
        movq $0, %fs:STATE_VFORK_FRAME(%r11)
        mov %rbx, %rsp
        .cfi_def_cfa_register %rsp
        pop %r9
        pop %r8
        pop %r10
        pop %rdx
        pop %rsi
        pop %rdi
        pop %r15
        pop %r14
        pop %r13
        pop %r12
        pop %rbp
        pop %rbx
        pop %rax
        .cfi_adjust_cfa_offset -FRAME_SIZE+8+RED_ZONE+8
        .cfi_restore %rbx
        .cfi_restore %rbp
        .cfi_restore %r12
        .cfi_restore %r13
        .cfi_restore %r14
        .cfi_restore %r15
        jmp .Lon_application_stack

.Lclear_df_ac:
        .cfi_def_cfa %rbx, FRAME_SIZE
        .cfi_offset %rip, -8
        .cfi_offset %rbx, -FRAME_SIZE+88
        .cfi_offset %rbp, -FRAME_SIZE+80
        .cfi_offset %r12, -FRAME_SIZE+72
        .cfi_offset %r13, -FRAME_SIZE+64
        .cfi_offset %r14, -FRAME_SIZE+56
        .cfi_offset %r15, -FRAME_SIZE+48
        pushq FRAME_RFLAGS(%rbx)
        andl $~(RFLAGS_DF | RFLAGS_AC), (%rsp)
        popfq
        jmp .Lflags_clear

.Lhook_retracted:                               /* undo, and let the dispatcher forward it */
        movl $0, (%rcx)
        movq $0, %fs:STATE_HOOK_FRAME(%r11)
.Ldispatch:
        test %r14, %r14                         /* the dispatcher may run any C++ code: */
        jz .Lsave_vectors                       /* save the vector state first */
        mov %rbx, %rdi
        mov %r14, %rsi
        call zpoline_detail_dispatch
        jmp .Lresult

        SAVE_OTHER_VECTOR_STATE .Lsave_other_vectors, .Lvectors_saved
        RESTORE_OTHER_VECTOR_STATE .Lrestore_other_vectors, .Lvectors_restored

        /* Back in the entry's frame: CFA = rsp + 8 + RED_ZONE + 8, (%rsp) = saved RFLAGS. */
.Lbypass:                                       /* no hook: straight to the kernel, */
        .cfi_def_cfa %rsp, 8+RED_ZONE+8
        .cfi_restore %rbx
        .cfi_restore %rbp
        .cfi_restore %r12
        .cfi_restore %r13
        .cfi_restore %r14
        .cfi_restore %r15
        cmp $58, %rax                           /* except vfork, clone and clone3, whose child */
        je .Lvfork_bypassed                     /* must not return through this stack frame */
        cmp $56, %rax
        je .Lfull
        cmp $435, %rax
        je .Lfull
        cmp $57, %rax                           /* fork: the child's thread records and SUD */
        je .Lfull
        cmpb $0, zpoline_detail_filter_signal_calls(%rip) /* once the library has taken */
        je 3f                                   /* signals, mask and disposition calls */
        cmp $13, %rax
        je .Lfull
        cmp $14, %rax
        je .Lfull
3:      cmpb $0, zpoline_detail_hook_live(%rip) /* and, while a hook is installed, calls that */
        je 1f                                   /* may bring new code (the dispatcher rewrites */
        cmp $11, %rax                           /* it) or remove code: munmap, */
        je .Lfull
        cmp $9, %rax                            /* mmap, mprotect, pkey_mprotect with PROT_EXEC */
        je 2f
        cmp $10, %rax
        je 2f
        cmp $329, %rax
        jne 1f
2:      test $PROT_EXEC, %dl
        jnz .Lfull
1:      syscall
        jmp .Lreturn

        /* No hook: straight to the kernel. A thread that armed Syscall User Dispatch while
         * the safety net was on and still has it armed now that the net is off (its selector
         * lets every call through) pays the kernel's slower entry for nothing: it disarms. */
.Lnot_live:
        .cfi_def_cfa %rsp, 8+RED_ZONE+8
        .cfi_offset %rip, -8
        cmpb $0, %fs:STATE_SUD_ARMED(%r11)
        je .Lbypass
        cmpb $0, zpoline_detail_sud_enabled(%rip)
        jne .Lbypass
        movb $0, %fs:STATE_SUD_ARMED(%r11)
        push %rax
        .cfi_adjust_cfa_offset 8
        push %rdi
        .cfi_adjust_cfa_offset 8
        push %rsi
        .cfi_adjust_cfa_offset 8
        mov $157, %eax                          /* prctl(PR_SET_SYSCALL_USER_DISPATCH, OFF) */
        mov $59, %edi
        xor %esi, %esi
        push %rdx
        .cfi_adjust_cfa_offset 8
        push %r10
        .cfi_adjust_cfa_offset 8
        push %r8
        .cfi_adjust_cfa_offset 8
        xor %edx, %edx
        xor %r10d, %r10d
        xor %r8d, %r8d
        syscall
        pop %r8
        .cfi_adjust_cfa_offset -8
        pop %r10
        .cfi_adjust_cfa_offset -8
        pop %rdx
        .cfi_adjust_cfa_offset -8
        pop %rsi
        .cfi_adjust_cfa_offset -8
        pop %rdi
        .cfi_adjust_cfa_offset -8
        pop %rax
        .cfi_adjust_cfa_offset -8
        jmp .Lbypass

        /* A thread without TLS (see zpoline_detail_tls_probe): it has no hook state, so its
         * calls go straight to the kernel; clone, clone3 and vfork, whose child would return
         * through this frame or need the TLS, fail with ENOSYS. */
        .globl zpoline_detail_no_tls
        .hidden zpoline_detail_no_tls
zpoline_detail_no_tls:
        cmp $56, %rax
        je 1f
        cmp $58, %rax
        je 1f
        cmp $435, %rax
        je 1f
        syscall
        jmp .Lreturn
1:      mov $-38, %rax
        jmp .Lreturn

.Lvfork_bypassed:
        mov zpoline_detail_thread_state@gottpoff(%rip), %r11
.Lon_application_stack:
        /* vfork, or a clone that shares this stack with its child: the child would overwrite
         * whatever lies below the application's rsp, including this stub's frame. So the
         * syscall (number in rax, the application's registers and RFLAGS) is made with rsp back
         * where the application had it, and both parent and child jump to the return address,
         * kept in this thread's vfork_returns stack with the hook state (the child shares the
         * TLS and may change it before it execs or exits). The parent pops the entry; the child
         * leaves it. After the popfq no instruction touches the flags (mov, lea, jrcxz, jmp).
         * r11 = the TLS offset of ThreadState; (%rsp) = saved RFLAGS. */
        mov %fs:STATE_VFORK_DEPTH(%r11), %ecx
        cmp $VFORK_MAX, %ecx
        jae .Lvfork_too_deep
        push %rdx                               /* one more scratch register, below the frame */
        .cfi_adjust_cfa_offset 8
        lea 1(%rcx), %edx
        mov %edx, %fs:STATE_VFORK_DEPTH(%r11)
        shl $5, %rcx                            /* 32-byte entries */
        lea STATE_VFORK_RETURNS(%r11,%rcx), %r11
        mov RED_ZONE+16(%rsp), %rdx             /* the return address */
        mov %rdx, %fs:VFORK_RETURN_ADDRESS(%r11)
        mov zpoline_detail_thread_state@gottpoff(%rip), %rcx
        mov %fs:STATE_BYPASS_DEPTH(%rcx), %rdx
        mov %rdx, %fs:VFORK_SAVED_STATE(%r11)
        mov %fs:STATE_HOOK_FRAME(%rcx), %rdx
        mov %rdx, %fs:VFORK_SAVED_HOOK_FRAME(%r11)
        pop %rdx
        .cfi_adjust_cfa_offset -8
        popfq
        .cfi_adjust_cfa_offset -8
        lea RED_ZONE+8(%rsp), %rsp              /* the application's rsp */
        .cfi_adjust_cfa_offset -(RED_ZONE+8)
        /* Entered here too, from the SIGSYS handler (safety_net.cpp), which has pushed the
         * vfork_returns entry itself: the application's registers, rsp and RFLAGS are live. The
         * way back is in the vfork_returns entry (TLS), which unwinders cannot read. */
        .cfi_undefined %rip
        .globl zpoline_detail_vfork_syscall
        .hidden zpoline_detail_vfork_syscall
zpoline_detail_vfork_syscall:
        syscall
        mov zpoline_detail_thread_state@gottpoff(%rip), %r11
        mov %fs:STATE_VFORK_DEPTH(%r11), %ecx
        lea -1(%rcx), %ecx
        lea 0(,%rcx,4), %rcx
        lea STATE_VFORK_RETURNS(%r11,%rcx,8), %r11  /* r11: this vfork's entry */
        mov %rax, %rcx
        jrcxz 6f                                /* result 0: the child */
        mov %rax, %fs:VFORK_RESULT(%r11)        /* the parent, once the child exec'd or exited */
        mov zpoline_detail_thread_state@gottpoff(%rip), %rcx
        mov %fs:VFORK_SAVED_STATE(%r11), %rax
        mov %rax, %fs:STATE_BYPASS_DEPTH(%rcx)
        mov %fs:VFORK_SAVED_HOOK_FRAME(%r11), %rax
        mov %rax, %fs:STATE_HOOK_FRAME(%rcx)
        mov %fs:STATE_VFORK_DEPTH(%rcx), %eax
        lea -1(%rax), %eax
        mov %eax, %fs:STATE_VFORK_DEPTH(%rcx)
        mov %fs:VFORK_RESULT(%r11), %rax
        mov %fs:VFORK_RETURN_ADDRESS(%r11), %rcx /* rcx = return address, as `syscall` leaves it */
        jmp *%rcx
6:      mov %fs:VFORK_RETURN_ADDRESS(%r11), %rax /* the child: arms SUD for itself (not */
        movzbl zpoline_detail_sud_enabled(%rip), %ecx /* inherited) below the red zone, no flag */
        jrcxz 7f                                /* changed; the TLS is the parent's: unmarked */
        lea -RED_ZONE(%rsp), %rsp
        call zpoline_detail_arm_new_thread
        lea RED_ZONE(%rsp), %rsp
7:      mov %rax, %rcx
        mov $0, %eax                            /* the child's result */
        jmp *%rcx

.Lvfork_too_deep:                               /* more nested vforks than slots: EAGAIN */
        .cfi_def_cfa %rsp, 8+RED_ZONE+8
        .cfi_offset %rip, -8
        mov $-11, %rax
        jmp .Lreturn

.Lsigreturn:
        lea RED_ZONE+16(%rsp), %rsp             /* exactly the stack the restorer had */
        syscall                                 /* does not return */
        ud2

.Lnot_registered:
        .cfi_def_cfa_offset 8+RED_ZONE+8+16
        /* Perhaps a copy of a site (a JIT that moves code the safety net rewrote in place):
         * rewriter.cpp, adopt_copied_site(), which registers it if so. General registers only;
         * the caller-saved ones are saved here. */
        push %rcx
        .cfi_adjust_cfa_offset 8
        push %rsi
        .cfi_adjust_cfa_offset 8
        push %rdi
        .cfi_adjust_cfa_offset 8
        push %r8
        .cfi_adjust_cfa_offset 8
        push %r9
        .cfi_adjust_cfa_offset 8
        push %r10
        .cfi_adjust_cfa_offset 8
        push %rbp
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %rbp, 0
        mov %rsp, %rbp
        .cfi_def_cfa_register %rbp
        and $-16, %rsp
        mov %rcx, %rdi
        call _ZN7zpoline6detail17adopt_copied_siteEm
        mov %rbp, %rsp
        .cfi_def_cfa_register %rsp
        pop %rbp
        .cfi_adjust_cfa_offset -8
        .cfi_restore %rbp
        pop %r10
        .cfi_adjust_cfa_offset -8
        pop %r9
        .cfi_adjust_cfa_offset -8
        pop %r8
        .cfi_adjust_cfa_offset -8
        pop %rdi
        .cfi_adjust_cfa_offset -8
        pop %rsi
        .cfi_adjust_cfa_offset -8
        pop %rcx
        .cfi_adjust_cfa_offset -8
        test %al, %al
        jnz .Lsite_registered                   /* registered now: a syscall like any other */
        pop %rax
        .cfi_adjust_cfa_offset -8
        pop %rdx
        .cfi_adjust_cfa_offset -8
        lea 2(%rcx), %rcx                       /* the return address again */
.Lstray_call:                                   /* a call into page 0 that no site made */
        mov %rsp, %rbp
        .cfi_def_cfa_register %rbp
        mov %rcx, %rdi
        mov %rax, %rsi
        and $-16, %rsp
        call zpoline_detail_report_stray_call   /* does not return */
        ud2
        .cfi_endproc
        .size zpoline_detail_entry, .-zpoline_detail_entry

/* long zpoline_detail_forward_syscall(const RegisterFrame* regs): the call forward() makes for
 * most numbers. It returns with `pop; jmp` rather than `ret` (see the entry stub). */
        .globl zpoline_detail_forward_syscall
        .hidden zpoline_detail_forward_syscall
        .type zpoline_detail_forward_syscall, @function
        .p2align 4
zpoline_detail_forward_syscall:
        .cfi_startproc
        mov FRAME_RAX(%rdi), %rax
        mov 0(%rdi), %r9
        mov 8(%rdi), %r8
        mov 16(%rdi), %r10
        mov 24(%rdi), %rdx
        mov 32(%rdi), %rsi
        mov 40(%rdi), %rdi
        push %rax                               /* the number, for a restart after the */
        .cfi_adjust_cfa_offset 8                /* library's request signal (platform/signals) */
        syscall
        .globl zpoline_detail_forward_syscall_resume
        .hidden zpoline_detail_forward_syscall_resume
zpoline_detail_forward_syscall_resume:
        lea 8(%rsp), %rsp
        .cfi_adjust_cfa_offset -8
        mov zpoline_detail_thread_state@gottpoff(%rip), %r11  /* Syscall::forward() set it */
        movb $0, %fs:STATE_FORWARDING(%r11)
        pop %rcx
        .cfi_adjust_cfa_offset -8
        .cfi_register %rip, %rcx
        jmp *%rcx
        .cfi_endproc
        .size zpoline_detail_forward_syscall, .-zpoline_detail_forward_syscall

/* long zpoline_detail_forward_saving_vectors(const SyscallFrame* frame)
 * forward() of a call the library handles with its own C++ code (clone, mmap, ...) where the stub
 * saved no vector state (Options::general_registers_only). Neither the stub nor the hook has
 * touched the vector registers, so they still hold the application's values: saved here as the
 * stub would, around zpoline_detail_forward_frame(frame with this save area). */
        .globl zpoline_detail_forward_saving_vectors
        .hidden zpoline_detail_forward_saving_vectors
        .type zpoline_detail_forward_saving_vectors, @function
        .p2align 4
zpoline_detail_forward_saving_vectors:
        .cfi_startproc
        push %rbp
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %rbp, 0
        mov %rsp, %rbp
        .cfi_def_cfa_register %rbp
        push %r12
        .cfi_offset %r12, -24
        push %r13
        .cfi_offset %r13, -32
        mov (%rdi), %r12                        /* the RegisterFrame */
        and $-64, %rsp
        sub zpoline_detail_xsave_size(%rip), %rsp
        SAVE_VECTOR_STATE .Lforward_save_other, .Lforward_saved
        mov %rsp, %rax
        sub $16, %rsp                           /* a SyscallFrame: the registers, this area */
        mov %r12, (%rsp)
        mov %rax, 8(%rsp)
        mov %rsp, %rdi
        call zpoline_detail_forward_frame
        add $16, %rsp
        mov %rax, %r12                          /* the result */
        RESTORE_VECTOR_STATE .Lforward_restore_other, .Lforward_restored
        mov %r12, %rax
        lea -16(%rbp), %rsp
        pop %r13
        .cfi_restore %r13
        pop %r12
        .cfi_restore %r12
        pop %rbp
        .cfi_def_cfa %rsp, 8
        .cfi_restore %rbp
        ret
        .cfi_def_cfa %rbp, 16                   /* the other vector modes, out of line */
        .cfi_offset %rbp, -16
        .cfi_offset %r12, -24
        .cfi_offset %r13, -32
        SAVE_OTHER_VECTOR_STATE .Lforward_save_other, .Lforward_saved
        RESTORE_OTHER_VECTOR_STATE .Lforward_restore_other, .Lforward_restored
        .cfi_endproc
        .size zpoline_detail_forward_saving_vectors, .-zpoline_detail_forward_saving_vectors

/* long zpoline_detail_raw_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5) */
        .globl zpoline_detail_raw_syscall
        .hidden zpoline_detail_raw_syscall
        .type zpoline_detail_raw_syscall, @function
        .p2align 4
zpoline_detail_raw_syscall:
        .cfi_startproc                          /* a cancelled thread unwinds through it */
        mov %rdi, %rax
        mov %rsi, %rdi
        mov %rdx, %rsi
        mov %rcx, %rdx
        mov %r8, %r10
        mov %r9, %r8
        mov 8(%rsp), %r9
        push %rax                               /* the number, as above */
        .cfi_adjust_cfa_offset 8
        syscall
        .globl zpoline_detail_raw_syscall_resume
        .hidden zpoline_detail_raw_syscall_resume
zpoline_detail_raw_syscall_resume:
        lea 8(%rsp), %rsp
        .cfi_adjust_cfa_offset -8
        ret
        .cfi_endproc
        .size zpoline_detail_raw_syscall, .-zpoline_detail_raw_syscall

/* zpoline_detail_arm_new_thread, zpoline_detail_arm_and_mark_new_thread (frame.hpp): SIGSYS
 * unblocked first, since a trap while it is blocked kills the process (a new thread starts with
 * whatever mask its creator had, pthread_create's "block all" included). */
        .globl zpoline_detail_arm_and_mark_new_thread
        .hidden zpoline_detail_arm_and_mark_new_thread
        .type zpoline_detail_arm_and_mark_new_thread, @function
zpoline_detail_arm_and_mark_new_thread:
        .cfi_startproc
        mov zpoline_detail_thread_state@gottpoff(%rip), %r11
        movb $1, %fs:STATE_SUD_ARMED(%r11)
        .globl zpoline_detail_arm_new_thread
        .hidden zpoline_detail_arm_new_thread
zpoline_detail_arm_new_thread:
        pushfq
        .cfi_adjust_cfa_offset 8
        push %rax
        .cfi_adjust_cfa_offset 8
        push %rdi
        .cfi_adjust_cfa_offset 8
        push %rsi
        .cfi_adjust_cfa_offset 8
        push %rdx
        .cfi_adjust_cfa_offset 8
        push %r10
        .cfi_adjust_cfa_offset 8
        push %r8
        .cfi_adjust_cfa_offset 8
        mov $14, %eax                           /* rt_sigprocmask(SIG_UNBLOCK, {SIGSYS}, 0, 8) */
        mov $1, %edi
        lea zpoline_detail_sigsys_set(%rip), %rsi
        xor %edx, %edx
        mov $8, %r10d
        syscall
        mov $157, %eax                          /* prctl */
        mov $59, %edi                           /* PR_SET_SYSCALL_USER_DISPATCH */
        mov $1, %esi                            /* PR_SYS_DISPATCH_ON */
        lea zpoline_detail_code_begin(%rip), %rdx
        lea zpoline_detail_code_end(%rip), %r10
        sub %rdx, %r10                          /* the library's own code may make syscalls */
        lea zpoline_detail_sud_selector(%rip), %r8
        syscall
        pop %r8
        .cfi_adjust_cfa_offset -8
        pop %r10
        .cfi_adjust_cfa_offset -8
        pop %rdx
        .cfi_adjust_cfa_offset -8
        pop %rsi
        .cfi_adjust_cfa_offset -8
        pop %rdi
        .cfi_adjust_cfa_offset -8
        pop %rax
        .cfi_adjust_cfa_offset -8
        popfq
        .cfi_adjust_cfa_offset -8
        ret
        .cfi_endproc
        .size zpoline_detail_arm_and_mark_new_thread, .-zpoline_detail_arm_and_mark_new_thread

/* long zpoline_detail_clone_to_site(const CloneRequest* request)
 * Makes a clone/clone3 whose child starts on a new stack. The request's stack already holds the
 * application's return address at its top, so the child, which starts here with rsp = that
 * stack, `ret`s straight to the application with the application's registers and vector state.
 * CloneRequest (dispatch/frame.hpp): regs, xsave, number, args[6]. */
        .globl zpoline_detail_clone_to_site
        .hidden zpoline_detail_clone_to_site
        .type zpoline_detail_clone_to_site, @function
        .p2align 4
zpoline_detail_clone_to_site:
        .cfi_startproc
        push %rbx
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %rbx, 0
        push %rbp
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %rbp, 0
        push %r12
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %r12, 0
        push %r13
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %r13, 0
        push %r14
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %r14, 0
        push %r15
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %r15, 0
        sub $16, %rsp                           /* the caller's x87 control word, MXCSR and */
        .cfi_adjust_cfa_offset 16               /* PKRU, which it gets back (with an empty */
        fnstcw (%rsp)                           /* x87 stack) */
        stmxcsr 4(%rsp)
        push %rdi
        .cfi_adjust_cfa_offset 8
        mov 8(%rdi), %rcx                       /* the application's vector state */
        movzbl zpoline_detail_xsave_mode(%rip), %eax
        cmp $3, %eax
        jne 6f
        RESTORE_YMM %rcx
        ldmxcsr 512(%rcx)
        RESTORE_X87 %rcx
        lea 528(%rcx), %rdx
        jmp 3f
6:      cmp $4, %eax
        jne 8f
        RESTORE_XMM %rcx
        ldmxcsr 512(%rcx)
        RESTORE_X87 %rcx
        lea 528(%rcx), %rdx
        jmp 3f
8:      cmp $5, %eax
        jne 7f
        testl $0xf0, ZMM_WIDTHS(%rcx)           /* each group at the width it was saved */
        jnz .Lclone_low_whole
        .irp r, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
        vmovdqu64 \r*64(%rcx), %ymm\r
        .endr
        jmp .Lclone_low_loaded
.Lclone_low_whole:
        .irp r, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
        vmovdqu64 \r*64(%rcx), %zmm\r
        .endr
.Lclone_low_loaded:
        testl $0xf000, ZMM_WIDTHS(%rcx)
        jnz .Lclone_high_whole
        .irp r, 16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        vmovdqu64 \r*64(%rcx), %ymm\r
        .endr
        jmp .Lclone_high_loaded
.Lclone_high_whole:
        .irp r, 16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        vmovdqu64 \r*64(%rcx), %zmm\r
        .endr
.Lclone_high_loaded:
        .irp r, 0,1,2,3,4,5,6,7
        kmovq 2048+\r*8(%rcx), %k\r
        .endr
        ldmxcsr ZMM_CONTROL+512(%rcx)
        lea ZMM_CONTROL(%rcx), %rdx
        RESTORE_X87 %rdx
        lea ZMM_CONTROL+528(%rcx), %rdx
3:      cmpb $0, zpoline_detail_save_pkru(%rip) /* the register modes: PKRU, the caller's kept */
        je 2f
        mov (%rdx), %esi
        xor %ecx, %ecx
        rdpkru
        mov %eax, 16(%rsp)
        mov %esi, %eax
        xor %edx, %edx
        wrpkru
        jmp 2f
7:      mov zpoline_detail_xsave_mask(%rip), %eax
        mov zpoline_detail_xsave_mask+4(%rip), %edx
        cmpb $0, zpoline_detail_xsave_mode(%rip)
        je 1f
        xrstor (%rcx)
        jmp 2f
1:      fxrstor (%rcx)
2:      mov (%rsp), %rdi
        mov (%rdi), %r11                        /* the application's RegisterFrame */
        mov 88(%r11), %rbx
        mov 80(%r11), %rbp
        mov 72(%r11), %r12
        mov 64(%r11), %r13
        mov 56(%r11), %r14
        mov 48(%r11), %r15
        mov 16(%rdi), %rax
        mov 32(%rdi), %rsi
        mov 40(%rdi), %rdx
        mov 48(%rdi), %r10
        mov 56(%rdi), %r8
        mov 64(%rdi), %r9
        mov 24(%rdi), %rdi
        syscall
        mov %rax, %rcx                          /* no flag changes: the child gets the */
        jrcxz 5f                                /* application's flags */
        pop %rdi
        .cfi_adjust_cfa_offset -8
        /* The parent returns to the library's C++ (the hook's forward()): the application's x87
         * stack and MXCSR loaded above stay the child's only (callee-saved control words, and
         * an empty x87 stack, as at any call). */
        fninit
        fldcw (%rsp)
        ldmxcsr 4(%rsp)
        movzbl zpoline_detail_xsave_mode(%rip), %ecx
        cmp $3, %ecx                            /* the XSAVE modes restored no PKRU */
        jb 3f
        cmpb $0, zpoline_detail_save_pkru(%rip)
        je 3f
        mov %rax, %rsi
        mov 8(%rsp), %eax
        xor %ecx, %ecx
        xor %edx, %edx
        wrpkru
        mov %rsi, %rax
3:      lea 16(%rsp), %rsp
        .cfi_adjust_cfa_offset -16
        pop %r15
        .cfi_adjust_cfa_offset -8
        .cfi_restore %r15
        pop %r14
        .cfi_adjust_cfa_offset -8
        .cfi_restore %r14
        pop %r13
        .cfi_adjust_cfa_offset -8
        .cfi_restore %r13
        pop %r12
        .cfi_adjust_cfa_offset -8
        .cfi_restore %r12
        pop %rbp
        .cfi_adjust_cfa_offset -8
        .cfi_restore %rbp
        pop %rbx
        .cfi_adjust_cfa_offset -8
        .cfi_restore %rbx
        ret
        /* The child, on its own stack: (%rsp) = the application's return address, and below it
         * the routine that arms the safety net for it, or 0 (dispatch.cpp, clone_to_site). */
5:      .cfi_undefined %rip
        mov -8(%rsp), %rcx
        jrcxz 4f
        call *%rcx
4:      ret                                     /* to the application */
        .cfi_endproc
        .size zpoline_detail_clone_to_site, .-zpoline_detail_clone_to_site

/* rt_sigreturn for a signal restorer whose syscall was not rewritten and trapped under Syscall
 * User Dispatch: the SIGSYS handler resumes here with the restorer's rsp. */
        /* An unwinder looks up the frame description of (return address - 1): this byte keeps
         * that lookup outside every FDE, so that the byte pattern below decides. */
        .p2align 4
        int3
        .globl zpoline_detail_sigreturn_gadget
        .hidden zpoline_detail_sigreturn_gadget
        .type zpoline_detail_sigreturn_gadget, @function
zpoline_detail_sigreturn_gadget:
        /* `mov $15, %rax; syscall` in exactly the encoding of the kernel's and glibc's restorer:
         * unwinders (libgcc, LLVM libunwind) recognise a signal frame by these bytes when no FDE
         * covers the address, so a thread cancelled inside a SIGSYS handler unwinds through the
         * signal frame into the interrupted code. Keep it outside any .cfi_startproc. */
        .byte 0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00
        syscall
        ud2
        .size zpoline_detail_sigreturn_gadget, .-zpoline_detail_sigreturn_gadget

        .globl zpoline_detail_code_end
        .hidden zpoline_detail_code_end
zpoline_detail_code_end:

        .section .rodata
        .p2align 3
zpoline_detail_sigsys_set:                      /* sigset_t with SIGSYS (31) alone */
        .quad 1 << 30

/* The globals the stub reads on every call, in one cache line (declared in dispatch/frame.hpp). */
        .data
        .p2align 6
        .macro GLOBAL name, size
        .globl \name
        .hidden \name
        .type \name, @object
        .size \name, \size
\name:
        .endm
        GLOBAL zpoline_detail_current_hook, 8   /* InstalledHook*, set by publish_hook() */
        .quad 0
        GLOBAL zpoline_detail_xsave_size, 8     /* bytes of the vector save area (platform/cpu) */
        .quad 576
        GLOBAL zpoline_detail_xsave_mask, 8     /* XSAVE components, in the XSAVE modes */
        .quad 0
        GLOBAL zpoline_detail_popf_flags, 4     /* set by map_trampoline() */
        .long 0xffffffff
        GLOBAL zpoline_detail_hook_live, 1
        .byte 0
        GLOBAL zpoline_detail_xsave_mode, 1     /* platform/cpu.hpp, VectorSaveMode */
        .byte 0
        GLOBAL zpoline_detail_general_registers_only, 1
        .byte 0
        GLOBAL zpoline_detail_membarrier_registered, 1
        .byte 0
        GLOBAL zpoline_detail_save_pkru, 1      /* the register modes keep PKRU (platform/cpu) */
        .byte 0

        .section .note.GNU-stack,"",@progbits
