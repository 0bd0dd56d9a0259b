from environments import Task
from trainer.driver.sampler import TaskSampler

TASKS = [Task(str(i), [{"role": "user", "content": str(i)}]) for i in range(5)]


def ids(tasks):
    return [t.id for t in tasks]


def test_each_epoch_visits_every_task_once_in_a_seeded_order():
    s = TaskSampler(TASKS, seed=3)
    first, second = ids(s.next(5)), ids(s.next(5))
    assert sorted(first) == sorted(second) == ["0", "1", "2", "3", "4"]
    assert first != second  # a new permutation per epoch
    assert ids(TaskSampler(TASKS, seed=3).next(10)) == first + second


def test_resuming_at_a_position_continues_the_same_stream():
    whole = TaskSampler(TASKS, seed=1)
    head = ids(whole.next(7))
    tail = ids(whole.next(6))
    cut = TaskSampler(TASKS, seed=1)
    cut.next(7)
    resumed = TaskSampler(TASKS, seed=1, epoch=cut.epoch, cursor=cut.cursor)
    assert ids(resumed.next(6)) == tail and len(head) == 7
