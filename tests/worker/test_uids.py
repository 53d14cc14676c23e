"""worker/uids.py: uid blocks claimed by flock, distinct while held, free again once released or
once the process holding one has died."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from worker.mounts import SetupError
from worker.uids import BLOCK_SLOTS, BLOCK_UIDS, FIRST_UID, claim_uid_block


def test_claims_are_distinct_until_released(tmp_path: Path) -> None:
    first, second = claim_uid_block(4, tmp_path), claim_uid_block(4, tmp_path)
    assert (first.base, second.base) == (FIRST_UID, FIRST_UID + BLOCK_UIDS)
    assert first.slot_uid(3) == FIRST_UID + 3 * 65536 < second.base
    first.release()
    assert claim_uid_block(4, tmp_path).base == FIRST_UID  # the freed block is the first free one
    second.release()


def test_a_block_held_by_another_process_is_skipped_and_freed_when_it_dies(tmp_path: Path) -> None:
    holds_a_block = (
        "import sys; from pathlib import Path; from worker.uids import claim_uid_block;"
        " print(claim_uid_block(1, Path(sys.argv[1])).base, flush=True); input()"
    )
    command = [sys.executable, "-c", holds_a_block, str(tmp_path)]
    holder = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and int(holder.stdout.readline()) == FIRST_UID
    mine = claim_uid_block(1, tmp_path)
    assert mine.base == FIRST_UID + BLOCK_UIDS
    holder.kill()
    holder.wait()
    assert claim_uid_block(1, tmp_path).base == FIRST_UID
    mine.release()


def test_too_many_slots_for_a_block_is_a_setup_error(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match=f"at most {BLOCK_SLOTS} slots"):
        claim_uid_block(BLOCK_SLOTS + 1, tmp_path)
