from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('dagger_django', '0006_outbox_dead'),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='workflow',
            options={'ordering': ['-time_created'], 'permissions': [('operate_workflow', 'Can create, stop, retry, edit parameters of and replay workflows'), ('post_event', 'Can post events (messages routed to listeners) through the API')]},
        ),
    ]
