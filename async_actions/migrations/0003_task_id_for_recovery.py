from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("async_actions", "0002_concurrency_key_and_run_after"),
    ]

    operations = [
        migrations.AddField(
            model_name="action",
            name="task_id",
            field=models.CharField(
                blank=True, default="", editable=False, max_length=255, verbose_name="task id"
            ),
        ),
    ]
