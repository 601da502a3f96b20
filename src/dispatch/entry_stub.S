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
#define FRAME_RETURN 240
#define RED_ZONE 128
#define PROT_EXEC 4
/* ThreadState (dispatch/frame.hpp) */
#define STATE_BYPASS_DEPTH 0
#define STATE_HOOK_FRAME 8
#define STATE_RUN_ON_APP_STACK 16
#define STATE_VFORK_DEPTH 20
#define STATE_VFORK_RETURNS 24
#define VFORK_RETURN_ADDRESS 0
#define VFORK_SAVED_STATE 8
#define VFORK_SAVED_HOOK_FRAME 16
#define VFORK_RESULT 24
#define VFORK_MAX 16
#define STATE_HOOK_CANARY_ADDRESS 536
#define STATE_HOOK_CANARY 544
/* SiteRegistry's table (rewriting/site_registry.cpp) */
#define SITE_TABLE_CAPACITY 0
#define SITE_TABLE_SLOTS 16
#define SITE_HASH_MULTIPLIER 0x9e3779b97f4a7c15

/* Vector state in the "registers" modes (platform/cpu.hpp): the registers compiled code may
 * clobber, plus MXCSR, at `base`. On CPUs where XRSTOR is slow this is far cheaper. */
        .macro SAVE_YMM base
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
        stmxcsr 512(\base)
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
        stmxcsr 512(\base)
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
        /* LDMXCSR is slow (serialising): only when the hook changed MXCSR. Clobbers ecx. */
        .macro RESTORE_MXCSR base
        stmxcsr 516(\base)
        mov 516(\base), %ecx
        cmp 512(\base), %ecx
        je 9f
        ldmxcsr 512(\base)
9:
        .endm

        .text
        .globl zpoline_detail_code_begin
        .hidden zpoline_detail_code_begin
zpoline_detail_code_begin:

        .globl zpoline_detail_entry
        .hidden zpoline_detail_entry
        .type zpoline_detail_entry, @function
        .p2align 6
zpoline_detail_entry:
        lea -RED_ZONE(%rsp), %rsp               /* step over the caller's red zone */
        pushfq                                  /* from here on flags may change */
        mov RED_ZONE+8(%rsp), %rcx              /* rcx, r11: free, `syscall` clobbers them */
        cmpw $0xd0ff, -2(%rcx)                  /* came from a `call *%rax` (ff d0)? */
        jne .Lstray_call
        /* And from a site the rewriter made, not an ordinary `call *%rax` with a NULL or small
         * function pointer in rax? Look the site up in the registry (site_registry.cpp): open
         * addressing, slot = ((site * K) >> 20) & (capacity - 1), 0 marks an empty slot. */
        push %rdx
        push %rax
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
        je 3f
        cmpq $0, SITE_TABLE_SLOTS(%r11,%rax,8)
        je .Lnot_registered
        inc %rax
        jmp 2b
3:      pop %rax
        pop %rdx
        cmp $15, %rax                           /* rt_sigreturn: run it on the signal frame */
        je .Lsigreturn
        mov zpoline_detail_thread_state@gottpoff(%rip), %r11
        cmpl $0, %fs:STATE_BYPASS_DEPTH(%r11)   /* ScopedBypass on this thread */
        jne .Lbypass
        mov %fs:STATE_HOOK_FRAME(%r11), %rcx    /* is the hook running on this thread? */
        test %rcx, %rcx
        jz 1f
        cmp %rcx, %rsp                          /* yes: above its frame, the dispatcher */
        jae .Lfull                              /* decides; below it, this is the hook's own */
        mov %fs:STATE_HOOK_CANARY_ADDRESS(%r11), %rcx  /* syscall if the dispatcher's frame */
        mov (%rcx), %rcx                        /* is still intact (else the hook was left by */
        cmp %fs:STATE_HOOK_CANARY(%r11), %rcx   /* a siglongjmp: the dispatcher resets) */
        je .Lbypass
        jmp .Lfull
1:      cmpb $0, zpoline_detail_hook_live(%rip)
        je .Lbypass

.Lfull:                                         /* save everything, call the dispatcher */
        push %rax
        push %rbx
        push %rbp
        push %r12
        push %r13
        push %r14
        push %r15
        push %rdi
        push %rsi
        push %rdx
        push %r10
        push %r8
        push %r9
        mov %rsp, %rbx                          /* rbx: the RegisterFrame, kept across calls */
        and $-64, %rsp                          /* XSAVE areas are 64-byte aligned */
        sub zpoline_detail_xsave_size(%rip), %rsp
        movzbl zpoline_detail_xsave_mode(%rip), %ecx
        cmp $3, %ecx
        jne 6f
        SAVE_YMM %rsp
        vzeroupper                              /* the C++ code is SSE: no dirty upper halves */
        jmp 3f
6:      cmp $4, %ecx
        jne 7f
        SAVE_XMM %rsp
        jmp 3f
7:      xor %ecx, %ecx                          /* XRSTOR faults unless header bytes 8..63 are 0 */
        mov %rcx, 520(%rsp)
        mov %rcx, 528(%rsp)
        mov %rcx, 536(%rsp)
        mov %rcx, 544(%rsp)
        mov %rcx, 552(%rsp)
        mov %rcx, 560(%rsp)
        mov %rcx, 568(%rsp)
        mov zpoline_detail_xsave_mask(%rip), %eax
        mov zpoline_detail_xsave_mask+4(%rip), %edx
        cmpb $2, zpoline_detail_xsave_mode(%rip)
        jne 1f
        xsavec (%rsp)                           /* compacted, skips components in init state */
        jmp 3f
1:      cmpb $1, zpoline_detail_xsave_mode(%rip)
        jne 2f
        xsave (%rsp)
        jmp 3f
2:      fxsave (%rsp)
3:      cld                                     /* the C++ ABI wants DF clear */
        mov %rbx, %rdi
        mov %rsp, %rsi
        call zpoline_detail_dispatch
        mov %rax, FRAME_RAX(%rbx)               /* the result, or the number for a vfork */
        movzbl zpoline_detail_xsave_mode(%rip), %ecx
        cmp $3, %ecx
        jne 6f
        RESTORE_YMM %rsp
        RESTORE_MXCSR %rsp
        jmp 5f
6:      cmp $4, %ecx
        jne 7f
        RESTORE_XMM %rsp
        RESTORE_MXCSR %rsp
        jmp 5f
7:      mov zpoline_detail_xsave_mask(%rip), %eax
        mov zpoline_detail_xsave_mask+4(%rip), %edx
        cmpb $0, zpoline_detail_xsave_mode(%rip)
        je 4f
        xrstor (%rsp)
        jmp 5f
4:      fxrstor (%rsp)
5:      mov %rbx, %rsp
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
        mov zpoline_detail_thread_state@gottpoff(%rip), %r11
        cmpl $0, %fs:STATE_RUN_ON_APP_STACK(%r11)
        jne .Lon_application_stack
.Lreturn:                                       /* (%rsp) = saved RFLAGS */
        mov (%rsp), %r11                        /* r11 = RFLAGS, as `syscall` leaves it */
        popfq
        lea RED_ZONE(%rsp), %rsp
        mov (%rsp), %rcx                        /* rcx = return address, as `syscall` leaves it */
        ret

.Lbypass:                                       /* no hook: straight to the kernel, */
        cmp $58, %rax                           /* except vfork, clone and clone3, whose child */
        je .Lvfork_bypassed                     /* must not return through this stack frame */
        cmp $56, %rax
        je .Lfull
        cmp $435, %rax
        je .Lfull
        cmpb $0, zpoline_detail_sud_enabled(%rip) /* under the SUD safety net, signal mask */
        je 3f                                   /* and disposition calls (SIGSYS stays open) */
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
        movl $0, %fs:STATE_RUN_ON_APP_STACK(%r11)
        mov %fs:STATE_VFORK_DEPTH(%r11), %ecx
        cmp $VFORK_MAX, %ecx
        jae .Lvfork_too_deep
        push %rdx                               /* one more scratch register, below the frame */
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
        popfq
        lea RED_ZONE+8(%rsp), %rsp              /* the application's rsp */
        /* Entered here too, from the SIGSYS handler (safety_net.cpp), which has pushed the
         * vfork_returns entry itself: the application's registers, rsp and RFLAGS are live. */
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
6:      mov %fs:VFORK_RETURN_ADDRESS(%r11), %rcx /* rcx = return address, as `syscall` leaves it */
        jmp *%rcx

.Lvfork_too_deep:                               /* more nested vforks than slots: EAGAIN */
        mov $-11, %rax
        jmp .Lreturn

.Lsigreturn:
        lea RED_ZONE+16(%rsp), %rsp             /* exactly the stack the restorer had */
        syscall                                 /* does not return */
        ud2

.Lnot_registered:
        pop %rax
        pop %rdx
        lea 2(%rcx), %rcx                       /* the return address again */
.Lstray_call:                                   /* a call into page 0 that no site made */
        mov %rcx, %rdi
        mov %rax, %rsi
        and $-16, %rsp
        call zpoline_detail_report_stray_call   /* does not return */
        ud2
        .size zpoline_detail_entry, .-zpoline_detail_entry

/* long zpoline_detail_raw_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5) */
        .globl zpoline_detail_raw_syscall
        .hidden zpoline_detail_raw_syscall
        .type zpoline_detail_raw_syscall, @function
        .p2align 4
zpoline_detail_raw_syscall:
        mov %rdi, %rax
        mov %rsi, %rdi
        mov %rdx, %rsi
        mov %rcx, %rdx
        mov %r8, %r10
        mov %r9, %r8
        mov 8(%rsp), %r9
        syscall
        ret
        .size zpoline_detail_raw_syscall, .-zpoline_detail_raw_syscall

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
        push %rbx
        push %rbp
        push %r12
        push %r13
        push %r14
        push %r15
        push %rdi
        mov 8(%rdi), %rcx                       /* the application's vector state */
        movzbl zpoline_detail_xsave_mode(%rip), %eax
        cmp $3, %eax
        jne 6f
        RESTORE_YMM %rcx
        ldmxcsr 512(%rcx)
        jmp 2f
6:      cmp $4, %eax
        jne 7f
        RESTORE_XMM %rcx
        ldmxcsr 512(%rcx)
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
        test %rax, %rax
        jnz 3f
        /* The child. Syscall User Dispatch is not inherited: arm it for this thread too when the
         * safety net is on. The child's stack holds only the return address so far, so the
         * registers can be saved below it. */
        cmpb $0, zpoline_detail_sud_enabled(%rip)
        je 4f
        push %rdi
        push %rsi
        push %rdx
        push %r10
        push %r8
        mov $157, %eax                          /* prctl */
        mov $59, %edi                           /* PR_SET_SYSCALL_USER_DISPATCH */
        mov $1, %esi                            /* PR_SYS_DISPATCH_ON */
        lea zpoline_detail_code_begin(%rip), %rdx
        lea zpoline_detail_code_end(%rip), %r10
        sub %rdx, %r10                          /* the library's own code may make syscalls */
        lea zpoline_detail_sud_selector(%rip), %r8
        syscall
        pop %r8
        pop %r10
        pop %rdx
        pop %rsi
        pop %rdi
        xor %eax, %eax                          /* the child's clone result */
4:      ret                                     /* to the application */
3:      pop %rdi
        pop %r15
        pop %r14
        pop %r13
        pop %r12
        pop %rbp
        pop %rbx
        ret
        .size zpoline_detail_clone_to_site, .-zpoline_detail_clone_to_site

/* rt_sigreturn for a signal restorer whose syscall was not rewritten and trapped under Syscall
 * User Dispatch: the SIGSYS handler resumes here with the restorer's rsp. */
        .globl zpoline_detail_sigreturn_gadget
        .hidden zpoline_detail_sigreturn_gadget
        .type zpoline_detail_sigreturn_gadget, @function
zpoline_detail_sigreturn_gadget:
        mov $15, %eax
        syscall
        ud2
        .size zpoline_detail_sigreturn_gadget, .-zpoline_detail_sigreturn_gadget

        .globl zpoline_detail_code_end
        .hidden zpoline_detail_code_end
zpoline_detail_code_end:

        .section .note.GNU-stack,"",@progbits
