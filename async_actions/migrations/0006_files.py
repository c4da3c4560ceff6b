import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("async_actions", "0005_action_page"),
    ]

    operations = [
        migrations.CreateModel(
            name="ActionFile",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "kind",
                    models.CharField(
                        choices=[("input", "Uploaded"), ("output", "Result")],
                        max_length=8,
                        verbose_name="kind",
                    ),
                ),
                ("name", models.CharField(max_length=255, verbose_name="name")),
                ("path", models.CharField(max_length=1024, verbose_name="path")),
                ("size", models.BigIntegerField(default=0, verbose_name="size")),
                (
                    "content_type",
                    models.CharField(
                        default="application/octet-stream",
                        max_length=127,
                        verbose_name="content type",
                    ),
                ),
                ("created_at", models.DateTimeField(auto_now_add=True, verbose_name="created")),
                (
                    "action",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="files",
                        to="async_actions.action",
                        verbose_name="action",
                    ),
                ),
            ],
            options={
                "verbose_name": "action file",
                "verbose_name_plural": "action files",
                "ordering": ("created_at", "id"),
            },
        ),
    ]
