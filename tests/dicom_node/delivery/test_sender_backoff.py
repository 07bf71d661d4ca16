from dicom_node.delivery.sender import backoff_s


def test_backoff_doubles_from_initial_up_to_cap() -> None:
    assert [backoff_s(n, 5, 60) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
