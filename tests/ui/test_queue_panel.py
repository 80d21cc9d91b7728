"""The queue panel on a stand-in client: a rebuild of the list (any job changing) keeps the job
the photographer is reading (its detail: why it failed), the selection and the scroll."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal

from ui.engine_client import JobInfo, JobKind, JobState
from ui.panels.queue import QueuePanel


class FakeClient(QObject):
    queue_changed = Signal()
    job_changed = Signal(object)
    overall_progress = Signal(float, object)

    def __init__(self) -> None:
        super().__init__()
        self.infos = {i: JobInfo(i, JobKind.RUN, Path(f"p{i}.jpg"), JobState.QUEUED,
                                 title=f"Fix p{i}.jpg") for i in range(1, 30)}
        self.infos[1] = JobInfo(1, JobKind.RUN, Path("p1.jpg"), JobState.FAILED,
                                error="p1.jpg: the photo is too large (210 MP, limit 200 MP)",
                                title="Fix p1.jpg")
        self.infos[2] = JobInfo(2, JobKind.RUN, Path("p2.jpg"), JobState.RUNNING, 0.3,
                                title="Fix p2.jpg")

    def jobs(self):
        return list(self.infos.values())

    def running_id(self):
        return next((i for i, j in self.infos.items() if j.state is JobState.RUNNING), None)

    def queued_ids(self):
        return [i for i, j in self.infos.items() if j.state is JobState.QUEUED]

    def is_idle(self) -> bool:
        return False

    def job(self, i):
        return self.infos.get(i)

    def clear_finished(self) -> None:
        pass


def test_a_refresh_keeps_the_job_being_read_and_its_detail(qtbot):
    client = FakeClient()
    panel = QueuePanel(client)  # type: ignore[arg-type]
    qtbot.addWidget(panel)
    panel.resize(400, 200)
    panel.show()
    qtbot.waitExposed(panel)
    failed = next(panel.list.item(i) for i in range(panel.list.count())
                  if panel.list.item(i).data(Qt.ItemDataRole.UserRole) == 1)
    panel.list.setCurrentItem(failed)
    why = "p1.jpg: the photo is too large (210 MP, limit 200 MP)"
    assert panel.detail.text() == why
    panel.list.scrollToBottom()
    scroll = panel.list.verticalScrollBar().value()
    assert scroll > 0
    # job 2 finishes and job 3 starts: the list is rebuilt
    client.infos[2] = JobInfo(2, JobKind.RUN, Path("p2.jpg"), JobState.DONE, title="Fix p2.jpg")
    client.infos[3] = JobInfo(3, JobKind.RUN, Path("p3.jpg"), JobState.RUNNING,
                              title="Fix p3.jpg")
    panel.refresh()
    cur = panel.list.currentItem()
    assert cur is not None and cur.data(Qt.ItemDataRole.UserRole) == 1
    assert panel.detail.text() == why
    assert panel._selected() == [1]
    assert panel.list.verticalScrollBar().value() == scroll
    # a job that is gone leaves nothing current
    del client.infos[1]
    panel.refresh()
    assert panel.list.currentItem() is None and panel.detail.text() == ""
